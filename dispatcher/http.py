"""The dispatcher's HTTP client and the POST of one delivery to an address the SSRF guard resolved."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import httpx

import latentq
from latentq.ssrf import Target


def http_client(timeout_s: float, ca_file: Path | None = None) -> httpx.Client:
    """Return the client deliveries use: no redirects, no proxies from the environment, and no
    kept-alive connections (each delivery connects to the address it resolved, with its own SNI).
    Certificates are checked against the public CAs, and those in ``ca_file`` if given."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return httpx.Client(
        verify=context,
        follow_redirects=False,
        trust_env=False,
        timeout=timeout_s,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": f"latentq-webhooks/{latentq.__version__}", "Content-Type": "application/json"},
    )


def post(http: httpx.Client, target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``target``'s resolved addresses in turn until one connects (``Host`` and the TLS
    name: its host); return the status. The answer's body is never read."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    for index, address in enumerate(target.addresses):
        url = httpx.URL(scheme=target.scheme, host=address, port=target.port, raw_path=target.path.encode())
        request = http.build_request(
            "POST", url, content=body, headers={"Host": target.host_header, **headers}, extensions=extensions
        )
        try:
            response = http.send(request, stream=True)
        except httpx.ConnectError:
            if index == len(target.addresses) - 1:
                raise
            continue
        response.close()
        return response.status_code
    raise AssertionError("a resolved target has at least one address")
