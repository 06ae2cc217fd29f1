"""A page whose polling of one API path is counted and, where a test needs a state, answered
by playwright: the libraries' status line and the migration banner are checked this way, with
the page's timers on playwright's clock so that no test waits for the polling."""

from __future__ import annotations

from typing import Any

Answers = list[tuple[int, dict[str, Any]]]


class PolledTab:
    """A page whose GET ``path`` calls are counted (and answered from ``answers``, in turn, the
    last one repeated, when given; passed to the gateway when None)."""

    def __init__(self, browser: Any, gateway_url: str, path: str,
                 answers: Answers | None) -> None:
        self.path = path
        self.context = browser.new_context(viewport={"width": 1280, "height": 800},
                                           color_scheme="light")
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.calls = 0
        self.page.clock.install()
        self.page.route(f"**{path}", lambda route: self._answer(route, answers))
        self.page.goto(gateway_url + "/")
        self.page.wait_for_selector("html[data-ready]", state="attached")

    def _answer(self, route: Any, answers: Answers | None) -> None:
        self.calls += 1
        if answers is None:
            route.continue_()
            return
        status, body = answers[min(self.calls, len(answers)) - 1]
        route.fulfill(status=status, json=body)

    def wait_calls(self, n: int) -> None:
        for _ in range(100):
            if self.calls >= n:
                return
            self.page.wait_for_timeout(50)
        raise AssertionError(f"{self.calls} calls of GET {self.path}, expected {n}")
