"""The Kubestep operator: what no worker can decide for itself. It admits queued runs (or says why
no worker serves them), enforces cancellation and run and queue timeouts, wakes waiting runs, and
re-queues runs whose worker is gone.

``running.run()`` starts it (``kubestep operator``: ``cli.py``). ``reconciling.decide`` is the whole
policy, a pure function; ``controller.Controller`` keeps what its informers report (``watching.py``),
decides, and writes through a backlog drained by a fixed number of writers (``writing.py``);
``scheduling.Scheduler`` keeps every deadline and wake-up in one task; ``electing.py`` lets one of
several replicas act. kopf only runs the process around them (``handlers``: start-up, clean-up, the
liveness probe; signals and the stop flag): it watches nothing itself.
"""

__all__: list[str] = []  # run it with `kubestep operator` (cli.py); running.run(OperatorSettings) in code
