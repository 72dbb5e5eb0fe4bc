"""The scale-out bench's proofs (``bench.scaleout.proofs``) catch a job run twice and a job run by a
worker that does not serve its model, from what real RQ workers write."""

from __future__ import annotations

import collections
import uuid

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from bench.scaleout.proofs import check
from latentq.keys import queue_name


def test_a_second_execution_and_a_misrouted_one_are_counted(redis):
    model = f"scaleout-{uuid.uuid4().hex[:8]}"
    queue = Queue(queue_name(model), connection=redis, serializer=JSONSerializer)
    once, twice = str(uuid.uuid4()), str(uuid.uuid4())
    for job_id in (once, twice):
        queue.enqueue_call("json.dumps", kwargs={"obj": [1]}, job_id=job_id, result_ttl=600)
    first, second = (f"{model}-{name}" for name in ("serving", "not-serving"))
    serving, not_serving = (SimpleWorker([queue], connection=redis, serializer=JSONSerializer, name=name)
                            for name in (first, second))  # fmt: skip
    for worker, job_id in ((serving, once), (serving, twice), (not_serving, twice)):  # twice: a duplicate
        worker.execute_job(queue.fetch_job(job_id), queue)

    proofs = check(redis, collections.Counter(), {once: (model, 0), twice: (model, 0)},
                   {once: 0, twice: 0}, {first: (model,), second: ("another-model",)})  # fmt: skip

    assert proofs["rq_executions"] == 3 and proofs["rq_worker_counters"] == 3
    assert proofs["executions_by_worker"] == {first: 2, second: 1}
    assert proofs["jobs_run_more_than_once"] == 1 and proofs["jobs_never_run"] == 0
    assert proofs["misrouted"] == 1 and twice in proofs["problems"]["misrouted"][0]
    assert not proofs["ok"]
