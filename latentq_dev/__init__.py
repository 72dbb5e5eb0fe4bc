"""Development and operator tooling, run from a checkout and shipped in no image: the local
services (``devstack``), the whole local stack ``make run`` starts (``devrun``) and the S3
lifecycle command (``lifecycle``)."""
