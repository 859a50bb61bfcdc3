"""The informer's list pages follow the objects' size (issue 17, finding 9): no cluster, a scripted
apiserver that serves a collection page by page."""

from __future__ import annotations

import json
from typing import Any, cast

from kubestep._informer import FIRST_PAGE, Informer, next_page
from kubestep._kube import Kube


def test_next_page_aims_at_the_target_weight() -> None:
    assert next_page(10, 10, 10 * 1_500_000, 4 << 20, 500) == 2  # 1.5 MB objects: 2 a page
    assert next_page(10, 10, 10 * 5_000, 4 << 20, 500) == 40  # small ones: grows, 4x at most
    assert next_page(160, 160, 160 * 5_000, 4 << 20, 500) == 500
    assert next_page(10, 10, 10 * 50_000_000, 4 << 20, 500) == 1
    assert next_page(10, 0, 0, 4 << 20, 500) == 40


class Paged:
    """A collection of ``sizes`` objects (bytes of input each), served ``limit`` at a time."""

    def __init__(self, sizes: list[int]) -> None:
        self.objects = [
            {"metadata": {"namespace": "ns", "name": f"r{i}", "resourceVersion": "1"}, "spec": {"input": "x" * n}}
            for i, n in enumerate(sizes)
        ]
        self.limits: list[int] = []
        self.peak = 0

    async def get_sized(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, int]:
        params = params or {}
        start, limit = int(params.get("continue") or 0), int(params["limit"])
        self.limits.append(limit)
        items = self.objects[start : start + limit]
        more = start + limit < len(self.objects)
        page = {
            "metadata": {"resourceVersion": "9", **({"continue": str(start + limit)} if more else {})},
            "items": items,
        }
        body = json.dumps(page)
        self.peak = max(self.peak, len(body))
        return json.loads(body), len(body)


async def test_a_list_of_large_runs_is_read_in_pages_of_about_the_target_weight() -> None:
    kube = Paged([1_000_000] * 60)  # 60 MB of inputs
    seen: list[str] = []
    informer = Informer(cast(Kube, kube), "/x", lambda c: seen.append(c.obj["metadata"]["name"]), page_bytes=4 << 20)
    assert await informer._list() == "9"
    assert len(seen) == 60 and kube.limits[0] == FIRST_PAGE
    assert kube.peak <= 10 * 1_000_200 and max(kube.limits[1:]) <= 4  # then about 4 MB a page


async def test_small_runs_are_read_in_pages_of_up_to_500() -> None:
    kube = Paged([100] * 3000)
    informer = Informer(cast(Kube, kube), "/x", lambda c: None, page_bytes=4 << 20)
    await informer._list()
    assert kube.limits[:4] == [10, 40, 160, 500]
    fixed = Paged([100] * 3000)
    await Informer(cast(Kube, fixed), "/x", lambda c: None, page_bytes=0)._list()
    assert set(fixed.limits) == {500}
