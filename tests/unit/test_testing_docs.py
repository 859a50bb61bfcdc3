"""Every code sample of ``docs/testing.md``, as written there: one test per sample, no cluster.

The samples' imports are gathered here at the top; the rest of each sample is copied verbatim, in
the doc's order. Change both together.
"""

from __future__ import annotations

import datetime as dt

from kubestep import ChildCall, EventTimeoutError, ExecutionCancelled, RetryPolicy, Workflow, WorkflowContext, workflow
from kubestep.testing import START, WorkflowEnvironment

# ----- A first test -------------------------------------------------------------------------------


def reserve(order: dict) -> dict:
    return {"sku": order["sku"], "reserved": order["qty"]}


async def charge(order: dict, amount: int) -> str:
    return f"charged {amount} for {order['sku']}"


@workflow
async def place_order(ctx: WorkflowContext, order: dict) -> dict:
    stock = await ctx.step.run("reserve", reserve, order)
    receipt = await ctx.step.run("charge", charge, order, order["qty"] * 5)
    return {"stock": stock, "receipt": receipt}


async def test_place_order() -> None:
    run = await WorkflowEnvironment().run(place_order, {"sku": "A-1", "qty": 2})
    assert run.phase == "Completed" and run.reason == "Succeeded"
    assert run.result == {"stock": {"sku": "A-1", "reserved": 2}, "receipt": "charged 10 for A-1"}
    assert run.completed_steps() == ["reserve", "charge"]
    assert run.step("charge")["output"] == "charged 10 for A-1"


# ----- A step that fails --------------------------------------------------------------------------


def decline(order: dict) -> str:
    raise ValueError(f"card declined for {order['id']}")


@workflow
async def pay(ctx: WorkflowContext, order: dict) -> str:
    return await ctx.step.run("charge", decline, order)


async def test_a_declined_card_fails_the_run() -> None:
    run = await WorkflowEnvironment().run(pay, {"id": "o-1"})
    assert (run.phase, run.reason) == ("Failed", "WorkflowError")
    assert isinstance(run.error, ValueError)
    assert run.step("charge")["state"] == "Failed"
    assert run.step("charge")["error"] == {"type": "ValueError", "message": "card declined for o-1"}


# ----- Waits: time is virtual ---------------------------------------------------------------------

SENT: list[str] = []


def send_mail(user: str, text: str) -> None:
    SENT.append(f"{user}: {text}")


@workflow
async def onboarding(ctx: WorkflowContext, user: str) -> None:
    await ctx.step.run("welcome", send_mail, user, "welcome")
    await ctx.step.wait_for("a-day-later", days=1)
    await ctx.step.run("follow-up", send_mail, user, "how is it going?")


async def test_the_day_passes_at_once() -> None:
    SENT.clear()
    env = WorkflowEnvironment(start=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    run = await env.run(onboarding, "ada")
    assert run.phase == "Completed"
    assert SENT == ["ada: welcome", "ada: how is it going?"]  # "welcome" was replayed, not sent again
    assert run.segments == 2  # the workflow ran again from the top after the wait
    assert env.now() == dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert run.step("a-day-later")["wakeAt"] == "2026-03-02T00:00:00.000000Z"


# ----- Events -------------------------------------------------------------------------------------


@workflow
async def publish(ctx: WorkflowContext, draft: str) -> str:
    review = await ctx.step.wait_for_event("review", "reviewed", timeout=3 * 24 * 3600)
    return "published" if review["approved"] else "rejected by " + review["by"]


async def test_an_approval_is_delivered() -> None:
    env = WorkflowEnvironment()
    env.send_event("reviewed", {"approved": False, "by": "alice"})
    run = await env.run(publish, "post-1")
    assert run.result == "rejected by alice"
    assert run.step("review")["event"] == "reviewed-0"  # the event's name (send_event(..., name=...))


async def test_no_review_in_three_days() -> None:
    env = WorkflowEnvironment()
    before = env.now()
    run = await env.run(publish, "post-1")
    assert (run.phase, run.reason) == ("Failed", "WorkflowError")
    assert isinstance(run.error, EventTimeoutError)
    assert env.now() - before == dt.timedelta(days=3)


# ----- Cancelling a run mid-way -------------------------------------------------------------------


async def copy_table(name: str) -> int:
    return len(name)  # rows copied


@workflow
async def migrate(ctx: WorkflowContext, tables: list[str]) -> None:
    for table in tables:
        await ctx.step.run(f"copy-{table}", copy_table, table)


async def test_a_cancel_lets_the_step_in_flight_finish() -> None:
    run = await WorkflowEnvironment().run(
        migrate, ["users", "orders", "items"], cancel_after_steps=2, reason="wrong region"
    )
    assert (run.phase, run.reason) == ("Cancelled", "Requested")
    assert isinstance(run.error, ExecutionCancelled)
    assert run.completed_steps() == ["copy-users", "copy-orders"]  # the second one was in flight
    assert run.step("copy-orders")["output"] == 6
    assert "copy-items" not in [s["key"] for s in run.steps]  # never started


# ----- Cleanup after a stop -----------------------------------------------------------------------


def create_vm(spec: dict) -> str:
    return "vm-" + spec["name"]


async def install(vm: str) -> str:
    return f"{vm} installed"


def delete_vm(vm: str, why: str) -> str:
    return f"deleted {vm} ({why})"


@workflow
async def provision(ctx: WorkflowContext, spec: dict) -> str:
    vm = await ctx.step.run("create-vm", create_vm, spec)
    try:
        await ctx.step.run("install", install, vm)
        await ctx.step.run("smoke-test", install, vm)
    finally:
        if ctx.stop:  # None unless the run was told to stop
            async with ctx.cleanup():
                await ctx.step.run("delete-vm", delete_vm, vm, ctx.stop.reason)
    return vm


async def test_a_stopped_run_deletes_its_vm() -> None:
    run = await WorkflowEnvironment().run(provision, {"name": "ci"}, timeout_before="smoke-test")
    assert (run.phase, run.reason) == ("Cancelled", "RunTimeout")
    assert run.completed_steps() == ["create-vm", "install", "delete-vm"]
    assert run.step("delete-vm")["cleanup"] is True
    assert run.step("delete-vm")["output"] == "deleted vm-ci (RunTimeout)"


async def test_past_the_grace_period_nothing_more_runs() -> None:
    run = await WorkflowEnvironment().run(provision, {"name": "ci"}, hard_stop_at="install")
    assert (run.phase, run.reason) == ("Cancelled", "GracePeriodExpired")
    assert run.step("install")["state"] == "Interrupted"
    assert run.completed_steps() == ["create-vm"]  # delete-vm was cut off too


# ----- Replay after a code change -----------------------------------------------------------------


def price(order: dict) -> int:
    return order["qty"] * 5


def bill(total: int) -> str:
    return f"billed {total}"


@workflow
async def invoice(ctx: WorkflowContext, order: dict) -> str:
    total = await ctx.step.run("price", price, order)
    await ctx.step.wait_for("cool-off", hours=1)
    return await ctx.step.run("bill", bill, total)


async def invoice_renamed(ctx: WorkflowContext, order: dict) -> str:  # the next release
    total = await ctx.step.run("compute-price", price, order)
    await ctx.step.wait_for("cool-off", hours=1)
    return await ctx.step.run("bill", bill, total)


def deployed_during_the_wait(old: Workflow, new) -> Workflow:
    """The old code runs the first segment; after the wait the new code resumes the run."""

    async def both(ctx: WorkflowContext, payload):
        return await (old.fn if ctx.attempt == 1 else new)(ctx, payload)

    return Workflow(both, old.id)


async def test_renaming_a_step_breaks_runs_in_flight() -> None:
    env = WorkflowEnvironment()
    run = await env.run(deployed_during_the_wait(invoice, invoice_renamed), {"qty": 2})
    assert (run.phase, run.reason) == ("Failed", "ReplayMismatch")
    assert "records step 'price' (Completed) next, but the code starts step 'compute-price'" in str(run.error)


# ----- Retries and child runs --------------------------------------------------------------------


@workflow(id="pay-order")
async def pay_order(ctx: WorkflowContext, order: dict) -> str:
    return await ctx.step.run("charge", charge, order, 10, retry=RetryPolicy(max_attempts=3, initial_interval=2))


@workflow(id="ship-orders")
async def ship_orders(ctx: WorkflowContext, orders: list) -> list:
    outcomes = await ctx.step.batch_invoke_and_wait("pay", [ChildCall("pay-order", o) for o in orders])
    return [o.phase for o in outcomes]


async def test_a_retried_charge_and_a_child_that_gives_up() -> None:
    env = WorkflowEnvironment()
    run = await env.run(pay_order, {"sku": "A-1"}, fail_attempts={"charge": 2})
    assert run.result == "charged 10 for A-1"
    assert [s["key"] for s in run.steps] == [
        "charge",
        "charge~backoff-1",
        "charge~attempt-2",
        "charge~backoff-2",
        "charge~attempt-3",
    ]
    assert run.clock - START == dt.timedelta(seconds=6)  # backoffs of 2 s and 4 s, skipped

    env = WorkflowEnvironment(child_plans={"pay": {"fail_attempts": {"charge": 3}}})
    run = await env.run(ship_orders, [{"sku": "A-1"}, {"sku": "B-2"}])
    assert run.result == ["Failed", "Failed"]
