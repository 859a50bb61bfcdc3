"""The Kubestep operator (kopf): the authority for cancellation and run timeouts.

``run()`` starts it; ``reconciling.decide`` is the whole policy, a pure
function; ``scheduling.Scheduler`` keeps every deadline and wake-up in one
task; ``handlers`` wires both to kopf.
"""

__all__: list[str] = []  # run it with `kubestep operator` (cli.py); running.run(OperatorSettings) in code
