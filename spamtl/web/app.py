"""The pages of ``spamtl web``: a user's verdicts, review queue, explanations and corrections; the admin's
users, model versions and plots; ``/metrics`` for Prometheus.

Every page is rendered on the server (Jinja2, autoescaped; message text is shown as escaped text, never
as HTML) and works without JavaScript.  Each view is a plain function of (request, principal) run in a
worker thread: the store and the model are the services', the same the CLI and the daemon use.  A user
sees only their own mail: a message they were not classified or labelled for answers 404 as if it did not
exist.  The admin pages show names, counts and model versions, never message text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from spamtl.errors import NoModelError, NotFoundError, SpamtlError, UnknownUserError, UsageError
from spamtl.services.access import Principal, token_holder
from spamtl.settings import Settings
from spamtl.web import guard

__all__ = ["create_app", "PAGE_SIZE", "REVIEW_SIZE", "REVIEW_POOL_WEB"]

PAGE_SIZE = 50
"""Verdicts per page."""
REVIEW_SIZE = 20
"""Messages the review page lists."""
REVIEW_POOL_WEB = 300
"""Recent unlabelled messages the review page re-scores (the CLI's ``review`` looks at more)."""
TEXT_CHARS = 20_000
"""Longest message text a page shows (the rest is cut, with a note)."""
PLOT_DAYS = 30

_SECURITY_HEADERS = {
    # Nothing runs and nothing loads from elsewhere: styles are inline, charts are inline SVG.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

View = Callable[..., Any]


def _now() -> datetime:
    return datetime.now()


class Web:
    """The application's state: settings, the store's engine, the templates."""

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings, self.engine = settings, engine
        self.templates = Environment(loader=PackageLoader("spamtl.web", "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True))
        self.templates.filters["pct"] = lambda p: "-" if p is None else f"{100 * p:.1f}%"
        self.templates.filters["prob"] = lambda p: "-" if p is None else f"{p:.4f}"
        self.templates.filters["when"] = lambda d: "-" if d is None else d.strftime("%Y-%m-%d %H:%M")

    def render(self, request: Request, who: Principal | None, name: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        is_user = who is not None and (not who.admin or self._is_user(who.name))
        html = self.templates.get_template(name).render(who=who, is_user=is_user, csrf=guard.csrf_token(request),
                                                        csrf_field=guard.CSRF_FIELD, **context)
        return HTMLResponse(html, status_code=status)


    def _is_user(self, name: str) -> bool:
        from spamtl.services.users import user_exists

        return user_exists(self.engine, name)


def _finish(web: Web, request: Request, response: Response) -> Response:
    """What every answer carries: a CSRF cookie the page made up, and the security headers."""
    guard.set_cookies(request, response, web.settings)
    response.headers.update(_SECURITY_HEADERS)
    return response


def _page(*, admin: bool = False, post: bool = False) -> Callable[[View], Callable[..., Any]]:
    """Wrap a view: who is asking (else the login page), CSRF on a POST, the admin role where needed,
    the view run in a worker thread, expected errors as a page with the right status, security headers."""

    def wrap(view: View) -> Callable[..., Any]:
        @functools.wraps(view)
        async def endpoint(request: Request) -> Response:
            web: Web = request.app.state.web
            try:
                form = await guard.read_form(request) if post else None
            except guard.BadForm as exc:
                response: Response = web.render(request, None, "error.html", 400, message=str(exc))
            else:
                response = await run_in_threadpool(_answer, web, view, request, form, admin)
            return _finish(web, request, response)

        return endpoint

    return wrap


def _answer(web: Web, view: View, request: Request, form: Any, admin: bool) -> Response:
    try:
        who = guard.principal_of(request, web.engine, web.settings, _now())
    except SpamtlError as exc:  # the store is down or locked: say so, as for any page
        return web.render(request, None, "error.html", 503, message=str(exc))
    if who is None:
        if form is not None:
            return web.render(request, None, "error.html", 401, message="Log in first.")
        return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)
    try:
        if form is not None and not guard.csrf_ok(request, form):
            raise guard.Forbidden("this form is stale or did not come from this site; reload the page and retry")
        if admin and not who.admin:
            raise guard.Forbidden("this page is for administrators")
        return view(web, request, who, form) if form is not None else view(web, request, who)
    except guard.Forbidden as exc:
        return web.render(request, who, "error.html", 403, message=str(exc))
    except (NotFoundError, UnknownUserError, NoModelError) as exc:
        return web.render(request, who, "error.html", 404, message=str(exc))
    except UsageError as exc:
        return web.render(request, who, "error.html", 400, message=str(exc))
    except SpamtlError as exc:
        return web.render(request, who, "error.html", 503, message=str(exc))


# ------------------------------------------------------------------------------------------- logging in
async def login_form(request: Request) -> Response:
    web: Web = request.app.state.web
    return _finish(web, request,
                   web.render(request, None, "login.html", next=_safe_next(request.query_params.get("next"))))


async def login(request: Request) -> Response:
    web: Web = request.app.state.web
    try:
        form = await guard.read_form(request)
    except guard.BadForm as exc:
        response: Response = web.render(request, None, "error.html", 400, message=str(exc))
    else:
        response = await _login_answer(web, request, form)
    return _finish(web, request, response)


async def _login_answer(web: Web, request: Request, form: dict[str, str]) -> Response:
    target = _safe_next(form.get("next"))
    if not guard.csrf_ok(request, form):
        return web.render(request, None, "login.html", 403, error="The form was stale; try again.", next=target)
    token = form.get("token", "").strip()
    holder = await run_in_threadpool(token_holder, web.engine, token, now=_now())
    if holder is None:
        return web.render(request, None, "login.html", 403, error="Unknown token.", next=target)
    response = RedirectResponse(target, status_code=303)
    guard.login_cookie(response, token, web.settings)
    return response


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@_page(post=True)
def logout(web: Web, request: Request, who: Principal, form: Any) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(guard.TOKEN_COOKIE, path="/")
    return response


@_page()
def home(web: Web, request: Request, who: Principal) -> Response:
    return RedirectResponse("/admin" if who.admin else "/mail", status_code=303)


# --------------------------------------------------------------------------------------- a user's pages
def _cutoffs(web: Web, user: str) -> Any:
    from spamtl.services.cutoffs import list_cutoffs

    return list_cutoffs(web.engine, web.settings, [user])[0]


def _cursor(value: str | None) -> tuple[datetime, int] | None:
    if not value:
        return None
    at, _, key = value.rpartition("_")
    try:
        return datetime.fromisoformat(at), int(key)
    except ValueError:
        raise UsageError(f"bad page position {value[:40]!r}") from None


@_page()
def verdicts(web: Web, request: Request, who: Principal) -> Response:
    from spamtl.services.history import history

    page = history(web.engine, user=who.name, limit=PAGE_SIZE, counts=False,
                   before=_cursor(request.query_params.get("before")))
    entries = page.entries
    after = None
    if len(entries) == PAGE_SIZE:
        last = entries[-1]
        after = f"{last.classified_at.isoformat()}_{last.key}"
    return web.render(request, who, "verdicts.html", entries=entries, cutoffs=_cutoffs(web, who.name),
                      next_page=after)


@_page()
def review(web: Web, request: Request, who: Principal) -> Response:
    from spamtl.services.review import review_queue

    ranked = review_queue(web.engine, web.settings, user=who.name, n=REVIEW_POOL_WEB, pool=REVIEW_POOL_WEB)
    ranked.sort(key=lambda item: (item.verdict != "unsure", item.priority, item.sha256))  # stable: unsure first
    return web.render(request, who, "review.html", items=ranked[:REVIEW_SIZE], cutoffs=_cutoffs(web, who.name))


def _message_context(web: Web, who: Principal, sha256: str) -> dict[str, Any]:
    from spamtl.services.explain import explain_message
    from spamtl.services.history import user_message

    user_message(web.engine, user=who.name, sha256=sha256)  # 404 unless it is theirs
    explanation = explain_message(web.engine, web.settings, user=who.name, ref=sha256, top=8)
    parsed = explanation.parsed  # the message as the scorer parsed it: shown, not parsed twice
    text = parsed.text
    return {"x": explanation, "parsed": parsed, "text": text[:TEXT_CHARS], "cut": len(text) > TEXT_CHARS,
            "sha256": sha256}


@_page()
def message(web: Web, request: Request, who: Principal) -> Response:
    sha256 = request.path_params["sha256"]
    context = _message_context(web, who, sha256)
    moved = None
    before = request.query_params.get("from")
    if before is not None:
        try:
            moved = float(before)
        except ValueError:
            moved = None
    return web.render(request, who, "message.html", moved=moved, **context)


@_page(post=True)
def label(web: Web, request: Request, who: Principal, form: Any) -> Response:
    from spamtl.services.feedback import record_feedback
    from spamtl.services.history import user_message

    sha256 = request.path_params["sha256"]
    choice = str(form.get("label") or "")
    if choice not in ("spam", "ham"):
        raise UsageError(f"unknown label {choice[:10]!r}; use spam or ham")  # 400: nothing stored
    user_message(web.engine, user=who.name, sha256=sha256)
    result = record_feedback(web.engine, web.settings, user=who.name, label=choice, now=_now(), ref=sha256,
                             create_user=False)
    _note_feedback(choice)
    shown = "" if result.probability_before is None else f"?from={result.probability_before:.6f}"
    return RedirectResponse(f"/mail/{sha256}{shown}", status_code=303)


def _note_feedback(label: str) -> None:
    from spamtl.services import telemetry

    telemetry.note_feedback(label, "web")


@_page()
def corrections_page(web: Web, request: Request, who: Principal) -> Response:
    from spamtl.services.history import corrections, history

    rows = corrections(web.engine, user=who.name, limit=PAGE_SIZE)
    counts = history(web.engine, user=who.name, entries=False).overall
    return web.render(request, who, "corrections.html", rows=rows, counts=counts,
                      cutoffs=_cutoffs(web, who.name))


# ----------------------------------------------------------------------------------------- admin pages
@_page(admin=True)
def admin(web: Web, request: Request, who: Principal) -> Response:
    from spamtl.services.history import daily_activity
    from spamtl.services.models import list_versions
    from spamtl.services.reports import list_users
    from spamtl.web.charts import stacked_bars

    versions = list_versions(web.engine)
    active = next((v for v in versions if v.status == "active"), None)
    quality = (active.metrics.get("user_auc_error_pct") or {}) if active else {}
    users = list_users(web.engine, web.settings)
    activity = daily_activity(web.engine, days=PLOT_DAYS, now=_now())
    trainings = {"promoted": [0] * PLOT_DAYS, "rejected": [0] * PLOT_DAYS}
    index = {d: i for i, d in enumerate(activity.days)}
    for v in versions:
        i = index.get(v.created_at.date().isoformat())
        if i is not None:
            trainings["rejected" if v.status == "rejected" else "promoted"][i] += 1
    plots = (("Verdicts per day", activity.verdicts), ("Corrections per day", activity.corrections),
             ("Trainings per day", trainings))
    charts = [(title, Markup(stacked_bars(title, activity.days, series)))  # noqa: S704 - SVG drawn and escaped here
              for title, series in plots]
    return web.render(request, who, "admin.html", users=users, quality=quality, versions=versions,
                      charts=charts, activated=request.query_params.get("activated"))


@_page(admin=True, post=True)
def activate_version(web: Web, request: Request, who: Principal, form: Any) -> Response:
    from spamtl.services.models import activate

    info = activate(web.engine, int(request.path_params["version"]))
    return RedirectResponse(f"/admin?activated={info.version}", status_code=303)


async def metrics(request: Request) -> Response:
    from spamtl.services import telemetry

    web: Web = request.app.state.web
    body, content_type = await run_in_threadpool(telemetry.exposition, web.engine)
    return Response(body, media_type=content_type)


def create_app(settings: Settings, engine: Any) -> Starlette:
    """The ASGI application of ``spamtl web`` on ``engine``'s store."""
    from spamtl.services import telemetry

    telemetry.enable()
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home, methods=["GET"]),
        Route("/mail", verdicts, methods=["GET"]),
        Route("/review", review, methods=["GET"]),
        Route("/corrections", corrections_page, methods=["GET"]),
        Route("/mail/{sha256:str}", message, methods=["GET"]),
        Route("/mail/{sha256:str}/label", label, methods=["POST"]),
        Route("/admin", admin, methods=["GET"]),
        Route("/admin/versions/{version:int}/activate", activate_version, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.web = Web(settings, engine)
    return app
