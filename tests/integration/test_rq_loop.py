"""The RQ worker base latentq's worker and dispatcher share (``latentq.rq_loop``), on a real Redis."""

from __future__ import annotations

import threading
import time

from rq import Queue

from latentq.rq_loop import LISTENER_READ_S, PromptListenerWorker


def test_command_listener_stops_promptly_after_reading_its_own_unsubscribe(redis):
    # The race a warm shutdown can lose: the listener thread reads the UNSUBSCRIBE reply before it
    # is told to stop, then waits for a subscription that never comes. With RQ's 60 s reads the
    # shutdown waited that long (measured: still stuck after 5 s).
    worker = PromptListenerWorker([Queue("listener-probe", connection=redis)], connection=redis)
    worker.subscribe()
    time.sleep(0.3)
    worker.pubsub.unsubscribe()
    time.sleep(0.5)  # the thread reads the reply and waits for a new subscription
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    started = time.perf_counter()
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive()
    assert time.perf_counter() - started < LISTENER_READ_S + 2


class RecordingWorker(PromptListenerWorker):
    """Notes the command payloads its listener hands it."""

    taken: list[dict] = []

    def handle_payload(self, message: dict) -> None:
        self.taken.append(message)


def test_command_listener_still_takes_commands(redis):
    worker = RecordingWorker([Queue("listener-probe", connection=redis)], connection=redis)
    worker.subscribe()
    try:
        deadline = time.monotonic() + 5
        while not worker.taken and time.monotonic() < deadline:
            redis.publish(worker.pubsub_channel_name, '{"command": "shutdown"}')
            time.sleep(0.2)
        assert worker.taken and worker.taken[0]["data"] == b'{"command": "shutdown"}'
    finally:
        worker.unsubscribe()
