"""Who answers a request (`selserve/dispatch.py`) and the worker pool's hand-over it relies
on (`selserve/workers.py`), without a socket or a server.

The connection is a `RecordingHandle` (what dispatch and the pool did to it, and in which
thread), applications are small recording fakes.  Pool tests use a real `EventLoop` run in
the test's own thread with bounded `run_once()` turns, and a real `WorkerPool`; the loop's
thread is therefore `threading.current_thread()` in the test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from selserve import backends
from selserve.app import FileBody, Request, Response, close_body, internal_error, native
from selserve.config import Config
from selserve.dispatch import Dispatch, as_native
from selserve.loop import EventLoop
from selserve.static import StaticFiles, mount
from selserve.workers import WAIT, PoolClosedFile, ThreadedBody, WorkerPool
from selserve.wsgi import WSGIAdapter

pytestmark = pytest.mark.timeout(30)

log = logging.getLogger("test_dispatch")

PEER = ("192.0.2.7", 51234)
LOCAL = ("127.0.0.1", 8000)
STATS = "/_stats"
LOOP_TIMEOUT = 5.0  # seconds any wait in these tests may take at most
TURN = 0.05  # longest single run_once() turn: the loop never blocks past it
MAX_TURNS = 10_000  # and never turns more often than this per wait
# One worker: the executor then runs submissions in order, which lets a test prove that a
# request was never submitted (a later one is answered, and the app saw only that one).
POOL_SIZE = 1
BODY_LIMIT = 4  # bytes a ThreadedBody holds: small, so streaming waits on the loop
WORKER_PREFIX = "selserve-worker"  # WorkerPool's thread_name_prefix
STATIC_CONTENT = b"static hello\n"


# --------------------------------------------------------------------------- fakes


def make_request(target: str = "/", method: str = "GET", body: bytes = b"") -> Request:
    """A request as the connection hands it over: the parser's fields, then arrived()."""
    path, _, query = target.partition("?")
    request = Request(
        method,
        target,
        path,
        query,
        "HTTP/1.1",
        [("host", "example.test")],
        keep_alive=True,
        content_length=len(body) if body else None,
        chunked=False,
        expect_continue=False,
        host="example.test",
    )
    return request.arrived(body, PEER, LOCAL)


class RecordingHandle:
    """A fake connection (dispatch's Handle): each respond() and resume(), in order, and
    the thread each ran in."""

    def __init__(self) -> None:
        self.events: list[str] = []  # "respond" / "resume"
        self.responses: list[Response] = []
        self.respond_threads: list[threading.Thread] = []
        self.resume_threads: list[threading.Thread] = []

    def respond(self, response: Response) -> None:
        self.events.append("respond")
        self.responses.append(response)
        self.respond_threads.append(threading.current_thread())

    def resume(self) -> None:
        self.events.append("resume")
        self.resume_threads.append(threading.current_thread())

    @property
    def answered(self) -> bool:
        """respond() and the resume() that follows it have both happened."""
        return "respond" in self.events and "resume" in self.events


class RecordingApp:
    """A native app returning (or raising from) `answer(request)`; it records the path and
    the thread of every call."""

    selserve_native = True

    def __init__(self, answer: Callable[[Request], object]) -> None:
        self.answer = answer
        self.paths: list[str] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, request: Request):
        self.paths.append(request.path)
        self.threads.append(threading.current_thread())
        return self.answer(request)


def answering(body: bytes = b"from the app\n") -> RecordingApp:
    return RecordingApp(lambda request: Response(200, [], body))


def raising(request: Request):
    raise RuntimeError("application bug")


# What a failing application does instead of returning a Response.
FAILURES = {
    "raises": raising,
    "returns-str": lambda request: "200 OK",
    "returns-none": lambda request: None,
}


class RecordingBody:
    """A streamed body (an iterable with close()) recording the thread its close() ran in."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed_on: threading.Thread | None = None
        self.closed = threading.Event()

    def __iter__(self):
        return iter(self.pieces)

    def close(self) -> None:
        self.closed_on = threading.current_thread()
        self.closed.set()


class RecordingFile(FileBody):
    """A FileBody recording the thread its close() ran in."""

    __slots__ = ("closed_on", "closed")

    def __init__(self, fileobj, offset: int = 0, count: int | None = None) -> None:
        super().__init__(fileobj, offset, count)
        self.closed_on: threading.Thread | None = None
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed_on = threading.current_thread()
        super().close()
        self.closed.set()


def is_worker(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.name.startswith(WORKER_PREFIX)


# --------------------------------------------------------------------------- the loop


def _noop() -> None:
    pass


def run_until(loop: EventLoop, done: Callable[[], bool], what: str) -> None:
    """Turn the loop (in this thread) until `done()`; fail after LOOP_TIMEOUT or MAX_TURNS."""
    deadline = time.monotonic() + LOOP_TIMEOUT
    for _ in range(MAX_TURNS):
        if done():
            return
        if time.monotonic() >= deadline:
            break
        tick = loop.call_later(TURN, _noop)  # bounds this turn's select()
        loop.run_once()
        tick.cancel()
    if not done():
        pytest.fail(f"{what}: not within {LOOP_TIMEOUT} s")


def wait_answer(loop: EventLoop, handle: RecordingHandle) -> Response:
    run_until(loop, lambda: handle.answered, "the handle got no answer")
    return handle.responses[0]


def consume(loop: EventLoop, handle: RecordingHandle, body) -> list[bytes]:
    """Iterate a threaded body in the loop as the connection does: next() gives a piece or
    WAIT, and after WAIT nothing is pulled until handle.resume() is called."""
    pieces = []
    producer = iter(body)
    for _ in range(MAX_TURNS):
        resumed = len(handle.resume_threads)
        try:
            piece = next(producer)
        except StopIteration:
            return pieces
        if piece is WAIT:
            run_until(
                loop,
                lambda resumed=resumed: len(handle.resume_threads) > resumed,
                "no resume() after WAIT",
            )
        else:
            pieces.append(piece)
    pytest.fail(f"the body did not end within {MAX_TURNS} pieces")


def wait_event(event: threading.Event, what: str) -> None:
    if not event.wait(LOOP_TIMEOUT):
        pytest.fail(f"{what}: not within {LOOP_TIMEOUT} s")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def loop():
    loop = EventLoop(backends.create(backends.best()))
    yield loop
    loop.close()


@pytest.fixture
def pool(loop):
    """A real pool on `loop`; at teardown it is shut down and its threads must end."""
    before = set(threading.enumerate())
    pool = WorkerPool(loop, POOL_SIZE, BODY_LIMIT)
    yield pool
    pool.shutdown()
    deadline = time.monotonic() + LOOP_TIMEOUT
    workers = [t for t in threading.enumerate() if t not in before and is_worker(t)]
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in workers if t.is_alive()]
    assert not stuck, f"worker threads still running after the pool was shut down: {stuck}"


@pytest.fixture
def handle(pool):
    """A recording handle for pool tests: at teardown (before the pool's) a streamed body
    that reached it is closed, as a connection does, so that no worker is left waiting on
    it.  File bodies are left to `file_body`: their close() would be queued on the pool."""
    handle = RecordingHandle()
    yield handle
    for response in handle.responses:
        if not isinstance(response.body, FileBody):
            close_body(response.body, log)


@pytest.fixture
def answers():
    """Answers a test got directly from dispatch: their bodies are closed at teardown."""
    got: list[Response] = []
    yield got
    for response in got:
        if response is not None:
            close_body(response.body, log)


@pytest.fixture
def static_root(tmp_path):
    (tmp_path / "hello.txt").write_bytes(STATIC_CONTENT)
    return tmp_path


@pytest.fixture
def file_body(pool, tmp_path):
    """file_body(offset, count): a RecordingFile over a 10-byte file.  At teardown (before
    the pool's) each one whose close() never ran is closed here."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789")
    made: list[RecordingFile] = []

    def open_body(offset: int = 0, count: int | None = None) -> RecordingFile:
        body = RecordingFile(open(path, "rb"), offset, count)  # noqa: SIM115 - the body owns it
        made.append(body)
        return body

    yield open_body
    for body in made:
        if not body.closed.is_set():
            body.fileobj.close()


# =========================================================================== no pool


def test_plain_app_dispatch_is_call_itself():
    dispatch = Dispatch(answering())
    assert dispatch.dispatch == dispatch.call


def test_dispatch_returns_the_apps_response():
    response = Response(200, [], b"mine\n")
    dispatch = Dispatch(RecordingApp(lambda request: response))
    assert dispatch.dispatch(make_request(), RecordingHandle()) is response


def test_dispatch_without_pool_never_uses_the_handle():
    handle = RecordingHandle()
    Dispatch(answering()).dispatch(make_request(), handle)
    assert handle.events == []


def test_route_answers_its_path():
    stats = Response(200, [], b"stats\n")
    dispatch = Dispatch(answering(), routes={STATS: lambda request: stats})
    assert dispatch.dispatch(make_request(STATS), RecordingHandle()) is stats


def test_a_route_that_raises_answers_500():
    def broken(request):
        raise RuntimeError("route bug")

    dispatch = Dispatch(answering(), routes={STATS: broken})
    assert dispatch.dispatch(make_request(STATS), RecordingHandle()).status == 500


def test_route_answering_none_passes_the_request_to_the_app():
    app = answering()
    dispatch = Dispatch(app, routes={STATS: lambda request: None})
    dispatch.dispatch(make_request(STATS), RecordingHandle())
    assert app.paths == [STATS]


def test_other_paths_go_to_the_app():
    app = answering()
    dispatch = Dispatch(app, routes={STATS: lambda request: Response(200, [], b"stats\n")})
    dispatch.dispatch(make_request("/page"), RecordingHandle())
    assert app.paths == ["/page"]


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_call_answers_500_for_a_failing_app(failure):
    response = Dispatch(RecordingApp(failure)).call(make_request())
    assert (response.status, response.body) == (500, internal_error().body)


@pytest.mark.parametrize("routes", [None, {STATS: raising}], ids=["plain", "with-routes"])
@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_dispatch_answers_500_for_a_failing_app(failure, routes):
    dispatch = Dispatch(RecordingApp(failure), routes=routes)
    response = dispatch.dispatch(make_request("/page"), RecordingHandle())
    assert (response.status, response.body) == (500, internal_error().body)


def test_failing_app_is_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="selserve"):
        Dispatch(RecordingApp(raising)).call(make_request("/page"))
    assert "application error on GET /page" in caplog.text


# --------------------------------------------------------------------------- answer_from_head


def app_with_on_head(on_head: Callable[[Request], object]) -> RecordingApp:
    app = answering()
    app.on_head = on_head
    return app


def test_answer_from_head_route_wins_over_on_head():
    stats = Response(200, [], b"stats\n")
    app = app_with_on_head(lambda request: Response(200, [], b"head\n"))
    dispatch = Dispatch(app, routes={STATS: lambda request: stats})
    assert dispatch.answer_from_head(make_request(STATS)) is stats


def test_answer_from_head_is_on_heads_answer():
    head = Response(200, [], b"head\n")
    dispatch = Dispatch(app_with_on_head(lambda request: head), routes={STATS: raising})
    assert dispatch.answer_from_head(make_request("/page")) is head


def test_answer_from_head_is_none_when_on_head_is():
    dispatch = Dispatch(app_with_on_head(lambda request: None))
    assert dispatch.answer_from_head(make_request("/page")) is None


def test_answer_from_head_is_none_without_on_head():
    assert Dispatch(answering()).answer_from_head(make_request("/page")) is None


def test_answer_from_head_never_calls_the_app():
    app = app_with_on_head(lambda request: None)
    Dispatch(app).answer_from_head(make_request("/page"))
    assert app.paths == []


def test_answer_from_head_is_500_when_on_head_raises():
    response = Dispatch(app_with_on_head(raising)).answer_from_head(make_request("/page"))
    assert (response.status, response.body) == (500, internal_error().body)


def test_answer_from_head_is_500_when_on_head_returns_a_non_response():
    dispatch = Dispatch(app_with_on_head(lambda request: b"not a Response"))
    response = dispatch.answer_from_head(make_request("/page"))
    assert (response.status, response.body) == (500, internal_error().body)


# =========================================================================== with a pool


def test_pool_dispatch_returns_none(loop, pool, handle):
    dispatch = Dispatch(answering(), pool=pool)
    try:
        assert dispatch.dispatch(make_request(), handle) is None
    finally:
        wait_answer(loop, handle)  # the worker is done before the pool is shut down


def test_pool_answer_is_the_apps_response(loop, pool, handle):
    response = Response(200, [], b"from a worker\n")
    Dispatch(RecordingApp(lambda request: response), pool=pool).dispatch(make_request(), handle)
    assert wait_answer(loop, handle) is response


def test_pool_answer_reaches_the_handle_in_the_loops_thread(loop, pool, handle):
    Dispatch(answering(), pool=pool).dispatch(make_request(), handle)
    wait_answer(loop, handle)
    assert handle.respond_threads == [threading.current_thread()]


def test_pool_answer_is_followed_by_resume(loop, pool, handle):
    Dispatch(answering(), pool=pool).dispatch(make_request(), handle)
    wait_answer(loop, handle)
    assert handle.events == ["respond", "resume"]


def test_pool_resume_runs_in_the_loops_thread(loop, pool, handle):
    Dispatch(answering(), pool=pool).dispatch(make_request(), handle)
    wait_answer(loop, handle)
    assert handle.resume_threads == [threading.current_thread()]


def test_pool_app_runs_on_a_worker_thread(loop, pool, handle):
    app = answering()
    Dispatch(app, pool=pool).dispatch(make_request(), handle)
    wait_answer(loop, handle)
    assert [is_worker(thread) for thread in app.threads] == [True]


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_pool_failing_app_answers_500(loop, pool, handle, failure):
    Dispatch(RecordingApp(failure), pool=pool).dispatch(make_request(), handle)
    response = wait_answer(loop, handle)
    assert (response.status, response.body) == (500, internal_error().body)


def test_pool_app_whose_on_head_passes_runs_on_a_worker(loop, pool, handle):
    app = app_with_on_head(lambda request: None)
    Dispatch(app, pool=pool).dispatch(make_request("/page"), handle)
    wait_answer(loop, handle)
    assert [is_worker(thread) for thread in app.threads] == [True]


def test_pool_asks_on_head_once_for_a_request_with_a_body(loop, pool, handle):
    # Its head was offered to answer_from_head already, before the body was read.
    asked = []
    app = app_with_on_head(lambda request: asked.append(request.path))
    Dispatch(app, pool=pool).dispatch(make_request("/upload", "POST", b"data"), handle)
    wait_answer(loop, handle)
    assert asked == []


# --------------------------------------------------------------------------- never behind the pool


def test_pool_route_is_answered_at_once(pool):
    stats = Response(200, [], b"stats\n")
    dispatch = Dispatch(answering(), pool=pool, routes={STATS: lambda request: stats})
    assert dispatch.dispatch(make_request(STATS), RecordingHandle()) is stats


def test_pool_route_never_reaches_the_app(loop, pool, handle):
    app = answering()
    stats = Response(200, [], b"stats\n")
    dispatch = Dispatch(app, pool=pool, routes={STATS: lambda request: stats})
    dispatch.dispatch(make_request(STATS), RecordingHandle())
    # With one worker, submissions run in order: once this later request is answered,
    # the route's request would have reached the app too, had it been submitted.
    dispatch.dispatch(make_request("/page"), handle)
    wait_answer(loop, handle)
    assert app.paths == ["/page"]


def test_pool_static_mount_is_answered_at_once(pool, static_root, answers):
    app = mount(answering(), [("/static", StaticFiles(static_root))])
    answer = Dispatch(app, pool=pool).dispatch(make_request("/static/hello.txt"), RecordingHandle())
    answers.append(answer)
    assert answer is not None and (answer.status, answer.body.count) == (200, len(STATIC_CONTENT))


def test_pool_static_mount_never_reaches_the_app(loop, pool, handle, static_root, answers):
    app = answering()
    dispatch = Dispatch(mount(app, [("/static", StaticFiles(static_root))]), pool=pool)
    answers.append(dispatch.dispatch(make_request("/static/hello.txt"), RecordingHandle()))
    dispatch.dispatch(make_request("/page"), handle)  # see test_pool_route_never_reaches_the_app
    wait_answer(loop, handle)
    assert app.paths == ["/page"]


def test_pool_static_mount_answers_a_request_with_a_body_from_its_head(pool, static_root, answers):
    dispatch = Dispatch(mount(answering(), [("/static", StaticFiles(static_root))]), pool=pool)
    head = make_request("/static/hello.txt", method="POST")  # the body is not read yet
    answer = dispatch.answer_from_head(head)
    answers.append(answer)
    assert answer is not None and answer.status == 405


# --------------------------------------------------------------------------- streamed bodies


def streaming(body) -> RecordingApp:
    return RecordingApp(lambda request: Response(200, [], body))


PIECES = [b"one", b"two", b"three", b"four", b"five", b"six"]


def test_pool_streamed_body_reaches_the_handle_as_a_threaded_body(loop, pool, handle):
    Dispatch(streaming(iter(PIECES)), pool=pool).dispatch(make_request(), handle)
    assert isinstance(wait_answer(loop, handle).body, ThreadedBody)


def test_pool_streamed_body_keeps_status_and_headers(loop, pool, handle):
    headers = [("Content-Type", "text/plain")]
    app = RecordingApp(lambda request: Response(203, headers, iter(PIECES), "Mine"))
    Dispatch(app, pool=pool).dispatch(make_request(), handle)
    response = wait_answer(loop, handle)
    assert (response.status, response.headers, response.reason) == (203, headers, "Mine")


def test_pool_streamed_body_delivers_every_piece(loop, pool, handle):
    # BODY_LIMIT is smaller than two pieces: the worker waits for the loop, and the loop
    # gets WAIT and a resume() many times over.
    Dispatch(streaming(piece for piece in PIECES), pool=pool).dispatch(make_request(), handle)
    body = wait_answer(loop, handle).body
    assert consume(loop, handle, body) == PIECES


def test_pool_streamed_body_of_a_generator_is_pulled_on_a_worker(loop, pool, handle):
    pulled_on = []

    def generate():
        for piece in PIECES:
            pulled_on.append(threading.current_thread())
            yield piece

    Dispatch(streaming(generate()), pool=pool).dispatch(make_request(), handle)
    consume(loop, handle, wait_answer(loop, handle).body)
    assert all(is_worker(thread) for thread in pulled_on) and len(pulled_on) == len(PIECES)


def test_pool_streamed_body_is_closed_on_a_worker(loop, pool, handle):
    body = RecordingBody(PIECES)
    Dispatch(streaming(body), pool=pool).dispatch(make_request(), handle)
    consume(loop, handle, wait_answer(loop, handle).body)
    wait_event(body.closed, "the app's body was never closed")
    assert is_worker(body.closed_on)


def test_pool_abandoned_generator_is_closed_on_a_worker(loop, pool, handle):
    closed = threading.Event()
    closed_on = []

    def endless():
        try:
            while True:
                yield b"more"
        finally:  # runs when close() throws GeneratorExit in
            closed_on.append(threading.current_thread())
            closed.set()

    Dispatch(streaming(endless()), pool=pool).dispatch(make_request(), handle)
    threaded = wait_answer(loop, handle).body
    threaded.close()  # in the loop: the client went away; the worker is waiting for room
    wait_event(closed, "the abandoned generator was never closed")
    assert [is_worker(thread) for thread in closed_on] == [True]


def test_pool_streamed_body_error_reaches_the_loop(loop, pool, handle):
    def failing():
        yield b"first"
        raise ValueError("broken stream")

    Dispatch(streaming(failing()), pool=pool).dispatch(make_request(), handle)
    body = wait_answer(loop, handle).body
    with pytest.raises(ValueError, match="broken stream"):
        consume(loop, handle, body)


# --------------------------------------------------------------------------- file bodies


def test_pool_file_body_reaches_the_handle_as_a_pool_closed_file(loop, pool, handle, file_body):
    app = RecordingApp(lambda request: Response(200, [], file_body()))
    Dispatch(app, pool=pool).dispatch(make_request(), handle)
    assert isinstance(wait_answer(loop, handle).body, PoolClosedFile)


def test_pool_file_body_keeps_its_file_and_range(loop, pool, handle, file_body):
    original = file_body(2, 5)
    Dispatch(streaming(original), pool=pool).dispatch(make_request(), handle)
    body = wait_answer(loop, handle).body
    assert (body.fileobj, body.offset, body.count) == (original.fileobj, 2, 5)


def test_pool_file_body_close_runs_on_a_worker(loop, pool, handle, file_body):
    original = file_body()
    Dispatch(streaming(original), pool=pool).dispatch(make_request(), handle)
    wait_answer(loop, handle).body.close()  # in the loop, as the connection does
    wait_event(original.closed, "the app's file body was never closed")
    assert is_worker(original.closed_on)


def test_pool_file_body_close_runs_in_place_once_the_pool_is_shut_down(
    loop, pool, handle, file_body
):
    original = file_body()
    Dispatch(streaming(original), pool=pool).dispatch(make_request(), handle)
    body = wait_answer(loop, handle).body
    pool.shutdown()  # the server is stopping
    body.close()
    assert original.closed_on is threading.current_thread()


def test_pool_file_body_closed_just_before_shutdown_is_still_closed(loop, pool, file_body):
    # The server's _close_everything() closes every connection (a file body's close() is
    # then queued on the pool) and then shuts the pool down: the queued close() must run.
    original = file_body()
    first = RecordingHandle()
    Dispatch(streaming(original), pool=pool).dispatch(make_request(), first)
    body = wait_answer(loop, first).body
    release = occupy_a_worker(pool)
    try:
        body.close()  # in the loop: queued behind the busy worker
        pool.shutdown()  # the server is stopping
    finally:
        release.set()
    assert original.closed.wait(LOOP_TIMEOUT), "the app's file body was never closed"


def occupy_a_worker(pool) -> threading.Event:
    """Start an app on `pool` that runs until the returned event is set."""
    busy, release = threading.Event(), threading.Event()

    def blocking(request):
        busy.set()
        release.wait(LOOP_TIMEOUT)
        return Response(200, [], b"slow\n")

    Dispatch(RecordingApp(blocking), pool=pool).dispatch(make_request(), RecordingHandle())
    wait_event(busy, "the blocking app never started")
    return release


def test_pool_shutdown_waits_for_a_running_app_no_longer_than_its_grace(loop, pool):
    release = occupy_a_worker(pool)
    try:
        started = time.monotonic()
        pool.shutdown(grace=0.3)
        waited = time.monotonic() - started
    finally:
        release.set()
    assert 0.25 <= waited < 1.5, f"shutdown waited {waited:.2f} s (grace 0.3 s)"


def test_pool_refuses_a_request_once_shut_down(pool, handle):
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda request: Response(200, [], b""), make_request(), handle)


# =========================================================================== as_native


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi\n"]


def test_as_native_returns_a_native_app_as_is():
    app = native(lambda request: Response(200, [], b"native\n"))
    assert as_native(app, Config()) is app


def test_as_native_wraps_a_wsgi_app_in_an_adapter():
    adapter = as_native(wsgi_app, Config())
    assert isinstance(adapter, WSGIAdapter) and adapter.app is wsgi_app


def test_as_native_adapter_takes_root_path_from_config():
    assert as_native(wsgi_app, Config(root_path="/app")).root_path == "/app"


def test_as_native_adapter_takes_url_scheme_from_config():
    assert as_native(wsgi_app, Config(url_scheme="https")).url_scheme == "https"
