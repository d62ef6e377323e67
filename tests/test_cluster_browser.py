"""Chromium pages on two nodes of one meeting (conference/cluster): each page shows the
other node's point as a tile with its name, decodes its camera and hears it."""

from __future__ import annotations

from typing import Any

from .conftest import ServerProcess
from .test_browser import browser, join, wait_for_media  # noqa: F401 - fixture
from .test_cluster import nodes  # noqa: F401 - fixture


def test_pages_on_two_nodes_show_each_other(nodes: list[ServerProcess], browser: Any) -> None:  # noqa: F811
    one, two = nodes
    names = {"huyen": "UBND huyện Đắk Glong", "xa-quang-son": "UBND xã Quảng Sơn"}
    pages = {
        "huyen": (join(browser, one, "huyen", names["huyen"]), one),
        "xa-quang-son": (join(browser, two, "xa-quang-son", names["xa-quang-son"]), two),
    }
    for identity, (page, server) in pages.items():
        wait_for_media(page, server, 1, 1, f"media from the other node on {identity}")
        other = [name for i, name in names.items() if i != identity]
        tiles = page.locator(".tile")
        assert tiles.count() == 1
        assert tiles.locator(".name").all_inner_texts() == other
        assert page.locator("#participants li").count() == 2
        assert not page.errors, page.errors
    for page, _ in pages.values():
        page.context.close()
