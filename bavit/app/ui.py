"""The Gradio page: :func:`create_demo` loads the Predictor (and the optional COCO ground truth) once, starts the
background latency timing and lays out the page (:func:`build_demo`); :func:`build_handlers` gives the event
functions, thin adapters from component values to :class:`~bavit.app.explorer.Explorer` calls and back to component
updates; :func:`add_api` adds the ``analyze`` API. ``app.py`` queues and launches the ``gr.Blocks``.

Stable ``elem_id``s for tests and embedding: ``input-image``, ``threshold``, ``cca-steps``, ``grid-raw``,
``grid-cca``, ``detections``, ``tokens``, ``latency``, ``sparsity``, ``gt-compare`` (plus ``mode``,
``target-sparsity``, ``run-detector``, ``show-dense``, ``curve``, ``banner``, ``gt-editor``, ``gt-apply``; with
``--data``, the dataset view's ``dataset``, ``dataset-scan``, ``dataset-sort``, ``dataset-resort``,
``dataset-summary``, ``dataset-gallery``).

Drawing in the browser. The two grid overlays and the curve are canvases that ``static/*.js`` draws (loaded with
``gr.Blocks(head=...)``); the server sends them data, not pictures, through the hidden ``#page-state`` textbox
(:mod:`bavit.app.page`). A slider move calls ``grid.js`` first (a ``js=`` event without a Python function): with the
detector off it applies the keep-mask rule in the page and sets the sparsity text and token table itself, with no
server round trip; with the detector on it clicks the hidden ``#server-update`` button, whose event runs the pruned
YOLOS and sends only what a slider changes. The server stays the source of truth for every other event.

Events take the components' raw values (no Gradio preprocessing: a client's values are parsed once, by
:class:`~bavit.app.session.Controls`) and show input problems as a ``gr.Error`` toast. A superseded event
(``Explorer.update`` returned ``None``) answers ``gr.skip()`` for every output, so the page keeps the newest. The
control events share one Gradio concurrency group (:data:`CONTROL_EVENTS`), so the queue starts them in arrival
order; per session, :meth:`Explorer.update` runs them one at a time and skips an event once a newer one is waiting.

The API: ``analyze(image, threshold, cca_steps, keep_ratio, sparsity)`` answers with
:func:`bavit.app.explorer.result`'s dict. The page's own events are callable too (``/page_image``,
``/page_slider``, ``/page_mode`` ...; kept off the API page): ``gr.State`` inputs and outputs are not part of their
signature, the session is the client's.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gradio as gr
from PIL import Image

from ..data.coco import CocoGroundTruth
from ..deploy.export import ExportProcess
from ..deploy.runtime import DEFAULT_BACKEND, check_backend
from ..errors import BAViTError
from ..predictor import Predictor
from ..pruning.detector import DEFAULT_DETECTOR
from ..pruning.settings import (
    DEFAULT_CCA_STEPS,
    DEFAULT_SPARSITY,
    DEFAULT_THRESHOLD,
    MAX_CCA_STEPS,
    MAX_SPARSITY,
    cca_steps_value,
)
from . import page, server, uploads, viz
from .explorer import DRAWN_KEYS, PAGE_KEYS, Explorer
from .server import ERRORS
from .session import (
    MODE_THRESHOLD,
    TARGET_MODES,
    Controls,
    ImageSession,
    default_mode,
    modes,
)

log = logging.getLogger(__name__)

HIDEABLE = {"gt_confusion"}
OUTPUT_KEYS = tuple(key for key in PAGE_KEYS if key not in DRAWN_KEYS)  # the page's components, in output order
TIMER_KEYS = ("latency", "det_message")  # the components the page's timer fills in (Explorer.fill_latency)
SLIDER_KEYS = tuple(key for key in PAGE_KEYS if key != "det_dense")  # a slider never changes the dense panel
# What a slider's server answer sets as components: the GT comparison; its texts travel in #page-state, and the page
# shows them only while the slider is still at the position asked (static/grid.js receive), as it does the grids.
SLIDER_OUTPUT_KEYS = ("gt_confusion", "gt_stats")
# How every control event is queued. One concurrency group: one FIFO queue (arrival order) instead of several, its
# limit the queue's default_concurrency_limit; per-session order and last-event-wins are Explorer.update's job.
# Raw values (preprocess=False): a client's "abc" or 2.5 CCA steps gets the same clear error on every event.
CONTROL_EVENTS: dict[str, Any] = {"trigger_mode": "always_last", "concurrency_id": "controls", "preprocess": False}


def _user_error(name: str, exc: Exception) -> gr.Error:
    """The toast for a failure of the event function ``name`` (called in its ``except`` block): its own text for a
    ``gr.Error`` or an input problem (BAViTError), else a short description, the failure logged."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, BAViTError):
        return gr.Error(str(exc), print_exception=False)
    if isinstance(exc, MemoryError):
        return gr.Error("out of memory while processing this image; try a smaller one", print_exception=False)
    log.exception("handler %s failed", name)  # keep the app up and say what happened
    return gr.Error(f"internal error ({exc.__class__.__name__}: {exc})", print_exception=False)


def _raise(error: gr.Error) -> NoReturn:
    error.__traceback__ = error.__context__ = error.__cause__ = None
    ERRORS.remember(error.message)  # for the /call stream's error event (bavit.app.server)
    raise error


def user_errors(fn: Callable) -> Callable:
    """An event function that shows input problems (BAViTError) as a gr.Error toast, and unexpected failures too,
    after logging them; a generator function (an event that yields updates) stays one.

    The toast is raised after the ``except`` block with no traceback of the failure attached: the failure's frames
    (a refused image's pixels among their locals) are freed now, not when Gradio lets go of the error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
                return
            except Exception as exc:
                error = _user_error(fn.__name__, exc)
            _raise(error)

        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = _user_error(fn.__name__, exc)
        _raise(error)

    return wrapper


def _controls(mode: Any, threshold: Any, target: Any, cca_steps: Any, detect: Any, show_dense: Any) -> Controls:
    """The controls' raw values as validated :class:`Controls`."""
    return Controls(mode=mode or MODE_THRESHOLD, threshold=threshold, target_sparsity=target, cca_steps=cca_steps,
                    detect=detect, show_dense=show_dense)


def _view_updates(view: dict[str, Any] | None, keys: tuple[str, ...] = PAGE_KEYS,
                  unchanged: frozenset[str] = frozenset()) -> list[Any]:
    """The component outputs of the view in ``keys`` order (the drawn keys travel in ``#page-state``); ``None`` (a
    superseded event) leaves them all as they are, and so does ``gr.skip()`` for the keys in ``unchanged`` (values
    the page already shows)."""
    keys = tuple(key for key in keys if key not in DRAWN_KEYS)
    if view is None:
        return [gr.skip() for _ in keys]
    return [gr.skip() if key in unchanged
            else gr.update(value=view[key], visible=view[key] is not None) if key in HIDEABLE else view[key]
            for key in keys]


def _unchanged_by_slider(explorer: Explorer, session: ImageSession, controls: Controls) -> frozenset[str]:
    """Page outputs a slider move cannot change: the detection panel unless live detections are drawn, the GT
    comparison when the image has no GT."""
    unchanged = set()
    if not (explorer.predictor.detector_ready and controls.detect):
        unchanged |= {"det_message"}
    if session.gt is None:
        unchanged |= {"gt_confusion", "gt_stats"}
    return frozenset(unchanged)


def _gt_grid(session: ImageSession) -> Image.Image | None:
    """The GT patch grid over the image, or ``None`` without GT."""
    return None if session.gt is None else viz.grid_overlay(session.display, session.gt == 1)


@dataclass(frozen=True)
class Handlers:
    """The event functions :mod:`bavit.app.ui` wires (callable without a browser, e.g. from tests).

    Arguments are the components' values in wiring order; ``*controls`` is ``mode, threshold, target, cca_steps,
    detect, show_dense`` (``target``, in percent, drives both target modes). The events answer with ``#page-state``
    (a :mod:`bavit.app.page` message, JSON) and the outputs in :data:`PAGE_KEYS` order (:data:`SLIDER_KEYS` for
    ``page_slider``); through ``gradio_client`` (``api_name`` ``/page_image`` and so on) the session is the client's:

    - ``page_image(payload, previous_session, *controls)`` -> ``[session, page_state, *outputs, gt_grid, editor,
      timer]`` (``outputs``: the components of :data:`OUTPUT_KEYS`; the detections travel in ``page_state``);
    - ``page_controls(session, *controls)`` -> ``[page_state, *outputs, timer]``;
    - ``page_slider(session, *controls)`` -> ``[page_state, gt_confusion, gt_stats, timer]``: the texts are in
      ``page_state``'s ``texts`` (the page shows them only if the slider has not moved on);
    - ``page_mode(session, *controls)`` -> ``[threshold visibility, target visibility, page_state, *outputs,
      timer]`` (``timer``: the page's timer switched on when the view waits for something it fills in);
    - ``page_paint(session, editor, *controls)`` -> ``[gt_grid, gt_confusion, gt_stats, page_state]``;
    - ``page_curve(session, cca_steps)`` -> page_state (the base plot of that CCA setting);
    - ``page_latency(session, *controls, ack)`` -> ``[page_news, *TIMER_KEYS, timer]`` (``page_news``: the timer's
      own message box, read like ``page_state``): each filled in once what it waits
      for is there (else ``gr.skip()``): the panels once their medians are there, the detections once the detector
      is built, or the detection ladder's new rungs; the controls move the ladder to the slider's position. The
      timer is switched off once nothing waits.

    The dataset view (an app with ``--data``; without one they answer with an error toast):

    - ``dataset_scan(request, sort, *controls)``: a generator of ``[gallery, summary]``: starts the app's one scan
      (:class:`~bavit.app.dataset.DatasetScan`; a scan already running or done is only followed) and yields the
      images scanned so far at the controls' setting, sorted by ``sort`` (``"lost"`` or ``"sparsity"``), as they
      come (:meth:`Explorer.follow_dataset`); ``gallery``: ``(path, caption)`` per image, most costly first;
    - ``dataset_show(request, sort, *controls)``: the same without starting a scan (what there is, following a scan
      that runs; before any scan, the summary says how to start one);
    - ``dataset_pick(selected)`` -> ``[image, gallery]``: the input image's new value, the path of the dataset image
      clicked in the gallery (``selected``: the gallery's ``gr.SelectData``), so the input image's change event opens
      it with its GT; and the gallery's selection cleared (Gradio sends a click only when the selection changes).

    ``request``: the Gradio request (``None`` outside Gradio): a newer dataset event of the same session stops an
    older one's updates (the last one wins, as with the control events).
    """

    page_image: Callable[..., list]
    page_controls: Callable[..., list]
    page_slider: Callable[..., list]
    page_mode: Callable[..., list]
    page_curve: Callable[..., Any]
    page_latency: Callable[..., Any]
    page_paint: Callable[..., list]
    dataset_scan: Callable[..., Iterator[list]]
    dataset_show: Callable[..., Iterator[list]]
    dataset_pick: Callable[..., list]


def _waits(session: ImageSession) -> bool:
    """The page's timer has something to fill in: the shown view waits, or the detection ladder has rungs to come
    (the timer itself keeps going while the page lacks some already computed)."""
    return session.waiting is not None or (session.job is not None and not session.job.complete)


def _timer(session: ImageSession) -> Any:
    """The page's timer switched on when the session waits for something it fills in, else left."""
    return gr.Timer(active=True) if _waits(session) else gr.skip()


def build_handlers(explorer: Explorer) -> Handlers:
    """The app's event functions around ``explorer``."""

    def page_state(session: ImageSession, view: dict[str, Any] | None, controls: Controls, slider: bool = False) -> Any:
        return gr.skip() if view is None else page.encode(page.view_message(explorer, session, view, controls, slider))

    @user_errors
    def page_image(payload: Any, previous: ImageSession | None, *values: Any) -> list[Any]:
        """A new image (or none: cleared): the new session, then the previous one retired (control events still on
        it skip; a running one finishes first)."""
        if previous is not None and explorer.ladders is not None:
            explorer.ladders.cancel(previous)
        if payload is None:
            if previous is not None:
                previous.retire()
            empty = {key: None for key in PAGE_KEYS}
            empty.update(sparsity="", tokens="", latency="", gt_stats="",
                         det_message=page.detections_text(explorer.predictor))
            return [None, page.encode(page.clear_message()), *_view_updates(empty),
                    gr.update(value=None, visible=False), None, gr.skip()]
        controls = _controls(*values)
        session = explorer.open_image(payload)
        warning = page.tiny_warning(session, explorer.predictor.bavit.config.img_size)
        if warning:
            gr.Warning(warning)
        view = explorer.update(session, controls)  # a new session: no other event can hold or supersede it yet
        gt_grid = _gt_grid(session)
        if previous is not None:
            previous.retire()
        return [session, page.encode(page.image_message(explorer, session, view, controls)), *_view_updates(view),
                gr.update(value=gt_grid, visible=gt_grid is not None),
                {"background": session.display, "layers": [], "composite": None}, _timer(session)]

    def control_event(keys: tuple[str, ...], session: ImageSession | None, *values: Any) -> list[Any]:
        """A control event; a slider's (:data:`SLIDER_KEYS`) leaves out what a slider cannot change and answers
        with :data:`SLIDER_OUTPUT_KEYS` (its texts in ``#page-state``). The controls are parsed even without an
        image, so a bad value is refused alike."""
        controls = _controls(*values)
        slider = keys == SLIDER_KEYS
        outputs = SLIDER_OUTPUT_KEYS if slider else keys
        if session is None:
            return [gr.skip()] * (2 + len([key for key in outputs if key not in DRAWN_KEYS]))
        unchanged = _unchanged_by_slider(explorer, session, controls) if slider else frozenset()
        view = explorer.update(session, controls, [key for key in keys if key not in unchanged])
        return [page_state(session, view, controls, slider), *_view_updates(view, outputs, unchanged),
                _timer(session)]

    @user_errors
    def page_controls(session: ImageSession | None, *controls: Any) -> list[Any]:
        return control_event(PAGE_KEYS, session, *controls)

    @user_errors
    def page_slider(session: ImageSession | None, *controls: Any) -> list[Any]:
        return control_event(SLIDER_KEYS, session, *controls)

    @user_errors
    def page_mode(session: ImageSession | None, *values: Any) -> list[Any]:
        # The sliders' visibility is skipped only when a newer *mode* event sets it: a newer slider move carries
        # this mode but does not set the visibility.
        mode = values[0]
        visibility = [gr.update(visible=mode not in TARGET_MODES), gr.update(visible=mode in TARGET_MODES)]
        if session is None:
            return visibility + [gr.skip()] * (2 + len(OUTPUT_KEYS))
        controls = _controls(*values)
        show_mode, view = explorer.change_mode(session, controls)
        return ((visibility if show_mode else [gr.skip(), gr.skip()]) + [page_state(session, view, controls)]
                + _view_updates(view, PAGE_KEYS) + [_timer(session)])

    @user_errors
    def page_curve(session: ImageSession | None, cca_steps: Any) -> Any:
        if session is None:
            return gr.skip()
        steps = cca_steps_value(cca_steps)
        with session.gate.hold():  # in this session's turn order; supersedes no control event
            plot = explorer.curve(session, steps)
            session.plots.setdefault(steps, plot)  # drawn once per CCA setting (a view's record keeps it too)
            return page.encode(page.curve_message(session, plot, steps))

    @user_errors
    def page_latency(session: ImageSession | None, *values: Any) -> list[Any]:
        """The page's timer: ``[page_state, latency, det_message, timer]``, each filled in once what it waited for
        is there (the medians, the detector's runner, the ladder's results the page lacks), ``gr.skip()`` when it
        has nothing new. ``values``: the controls, then the page's ack (JSON ``{"job", "masks"}``: the
        detection-ladder results it holds; a page message can be lost, so the page says what it has)."""
        if session is None:
            return [gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)]
        controls, ack = values[:6], page.read_ack(values[6] if len(values) > 6 else None)
        try:  # the slider's position, for the ladder's order (a bad value is the control events' to refuse)
            if controls:
                explorer.follow_slider(session, _controls(*controls))
        except BAViTError:
            pass
        filled = explorer.fill_latency(session) or {}
        view, state = filled.pop("view", None), gr.skip()
        news = {} if view is not None else explorer.ladder_news(session, ack)
        if view is not None:
            state = page.encode(page.view_message(explorer, session, view, view["controls"]))
        elif news:
            state = page.encode(page.rungs_message(session, session.job, news))
        done = not _waits(session) and (ack is None or not news)  # without an ack (an API client): once computed
        return [state, *_view_updates(filled, TIMER_KEYS, frozenset(key for key in TIMER_KEYS if key not in filled)),
                gr.Timer(active=False) if done else gr.skip()]

    @user_errors
    def page_paint(session: ImageSession | None, editor_value: Any, *values: Any) -> list[Any]:
        controls = _controls(*values)
        if session is None:
            raise gr.Error("Load an image first, then paint its objects.", print_exception=False)
        view = explorer.paint_gt(session, editor_value, controls)
        if view is None:
            raise gr.Error("Nothing painted yet: paint the objects with the brush, then compare.",
                           print_exception=False)
        # the page now has GT: its sliders ask the server
        return [gr.update(value=_gt_grid(session), visible=True), gr.update(value=view["gt_confusion"], visible=True),
                view["gt_stats"], page_state(session, view, controls)]

    newest: dict[str, int] = {}  # session hash -> its newest dataset event (older ones stop updating)
    tickets = itertools.count(1)
    newest_lock = threading.Lock()

    def dataset_follow(request: Any, start: bool, sort: Any, values: tuple) -> Iterator[list[Any]]:
        controls = _controls(*values)
        session, ticket = getattr(request, "session_hash", None), next(tickets)
        if session:
            with newest_lock:
                newest[session] = ticket
        try:
            for view in explorer.follow_dataset(controls, sort, start=start):
                if session and newest.get(session) != ticket:
                    return
                yield [view["gallery"], view["summary"]]
        finally:
            if session:
                with newest_lock:
                    if newest.get(session) == ticket:
                        del newest[session]

    @user_errors
    def dataset_scan(request: gr.Request, sort: Any, *controls: Any) -> Iterator[list[Any]]:
        yield from dataset_follow(request, True, sort, controls)

    @user_errors
    def dataset_show(request: gr.Request, sort: Any, *controls: Any) -> Iterator[list[Any]]:
        yield from dataset_follow(request, False, sort, controls)

    @user_errors
    def dataset_pick(selected: gr.SelectData) -> list[Any]:
        # The gallery's selection cleared, so a click on the same place (to come back, or after a new sort) is sent
        # again. A component, not gr.update: Gradio drops the None values of an update dict.
        return [str(explorer.pick_dataset_image(_selected_name(getattr(selected, "value", None)))),
                gr.Gallery(selected_index=None)]

    return Handlers(page_image=page_image, page_controls=page_controls, page_slider=page_slider, page_mode=page_mode,
                    page_curve=page_curve, page_latency=page_latency, page_paint=page_paint,
                    dataset_scan=dataset_scan, dataset_show=dataset_show, dataset_pick=dataset_pick)


def _selected_name(value: Any) -> str | None:
    """The file name of a gallery item as the page sends it on a click (``{"image": {"path", "orig_name", ...},
    "caption"}``), or ``None``."""
    image = value.get("image") if isinstance(value, dict) else None
    if not isinstance(image, dict):
        return None
    name = image.get("orig_name") or image.get("path")
    return Path(name).name if isinstance(name, str) and name else None


def add_api(explorer: Explorer) -> None:
    """Add the ``analyze`` API (hidden components and their event) to the page being built:
    ``analyze(image, threshold, cca_steps, keep_ratio, sparsity)`` answers with :func:`bavit.app.explorer.result`'s
    dict (settings as :meth:`~bavit.pruning.settings.PruningSettings.from_api` parses them)."""
    with gr.Row(visible=False):
        image = gr.Image(type="filepath", label="image")
        threshold = gr.Number(value=DEFAULT_THRESHOLD, label="threshold")
        cca = gr.Number(value=DEFAULT_CCA_STEPS, precision=0, label="cca_steps")
        keep = gr.Number(value=0, label="keep_ratio (0 = off)")
        sparsity = gr.Number(value=0, label="sparsity (target mean over images, a fraction; calibrated checkpoints; "
                                            "0 = off)")
        result = gr.JSON(label="result")
        analyze = gr.Button("analyze")

    @user_errors
    def on_api(payload: Any, threshold: Any, cca_steps: Any, keep_ratio: Any, sparsity: Any = None) -> dict[str, Any]:
        if payload is None:
            raise gr.Error("no image given", print_exception=False)
        return explorer.api_result(payload, threshold=threshold, cca_steps=cca_steps, keep_ratio=keep_ratio,
                                   sparsity=sparsity)

    analyze.click(on_api, [image, threshold, cca, keep, sparsity], result, api_name="analyze", preprocess=False)


# The dataset view's events (a scan's followers wait for its batches): one concurrency group of their own, so they
# never hold the control events' workers; raw values, as the control events'.
DATASET_EVENTS: dict[str, Any] = {"concurrency_id": "dataset", "concurrency_limit": 8, "preprocess": False,
                                  "show_api": False, "show_progress": "minimal"}
DATASET_GALLERY_HEIGHT = 640  # px
LATENCY_TICK_S = 0.5  # s: how often an open page that waits asks for what it waits for (cheap: off the queue)
IMAGE_HEIGHT = 340  # px: output images are scaled to fit, so portrait photos do not stretch the page
MODE_INFO = ("Mean sparsity: one calibrated threshold for all images, so each image's sparsity follows its content "
             "(paper Table 2). Top-k: this image held at the target.")
MODE_INFO_UNCALIBRATED = ("Top-k: this image held at the target sparsity. (This checkpoint has no calibration, so a "
                          "mean sparsity over images cannot be set.)")
CSS = """
#banner {background: #fff3cd; border: 1px solid #e0b100; border-radius: 6px; padding: 4px 12px;}
#tokens table {font-variant-numeric: tabular-nums;}
#dataset-gallery .caption-label {max-width: calc(100% - 8px); white-space: normal;}
"""


def example_images(directory: Path = uploads.EXAMPLES_DIR) -> list[str]:
    """The gallery's images (``assets/examples/*.jpg|png``), sorted by name."""
    return sorted(str(p) for p in directory.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def build_demo(explorer: Explorer, examples: list[str] | None = None, coco_examples: list[str] | None = None) -> gr.Blocks:
    """Lay out the page around ``explorer`` (shared by all sessions; per-session data lives in ``gr.State``)."""
    with warnings.catch_warnings():  # Gradio 5 API that Gradio 6 renames (css, show_api, api_name=False)
        warnings.filterwarnings("ignore", message=".*Gradio 6", category=DeprecationWarning)
        return _build_demo(explorer, examples, coco_examples)


def _build_demo(explorer: Explorer, examples: list[str] | None, coco_examples: list[str] | None) -> gr.Blocks:
    examples = example_images() if examples is None else examples
    ready = explorer.predictor.detector_ready
    handlers = build_handlers(explorer)

    explorer.allow_images_from(gr.utils.get_upload_folder())  # the one folder requests may name, with the examples
    with gr.Blocks(title="BAViT Explorer", css=CSS, head=page.head_html(), analytics_enabled=False,
                   delete_cache=(uploads.CACHE_LIFETIME, uploads.CACHE_LIFETIME)) as demo:
        session_state = gr.State(None, time_to_live=3600)  # per session; dropped 1 h after the last use
        gr.Markdown(
            "# BAViT Explorer: background-aware token pruning\n"
            f"A {explorer.predictor.bavit.config.depth}-layer ViT (**BAViT**) labels each 16x16 patch foreground or "
            f"background at {explorer.predictor.bavit.config.img_size} px; **YOLOS** then runs "
            "only on the foreground patches at 512 px. Raise the sparsity (or the threshold): fewer kept patches, fewer "
            "tokens, faster detection, and you see what gets lost."
        )
        gr.Markdown(page.banner_text(explorer.predictor), elem_id="banner", visible=not ready)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(label="Input image", type="filepath", elem_id="input-image", sources=["upload", "clipboard"],
                                 height=320)
                # The calibrated mode only with a calibration; the default is the paper's setting when there is one.
                default = default_mode(explorer.predictor)
                target_mode = default in TARGET_MODES
                calibrated = explorer.predictor.calibration is not None
                mode = gr.Radio(modes(explorer.predictor), value=default, label="Sparsity control", elem_id="mode",
                                info=MODE_INFO if calibrated else MODE_INFO_UNCALIBRATED)
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="FG-probability threshold (patches above it are kept)",
                                      elem_id="threshold", visible=not target_mode)
                target = gr.Slider(0, round(100 * MAX_SPARSITY), value=round(100 * DEFAULT_SPARSITY), step=1, label="Target sparsity (% of YOLOS patches pruned)",
                                   elem_id="target-sparsity", visible=target_mode)
                cca_steps = gr.Slider(0, MAX_CCA_STEPS, value=DEFAULT_CCA_STEPS, step=1, label="CCA steps (grow FG into cells with >= 3 FG neighbours)",
                                      elem_id="cca-steps")
                with gr.Row():
                    detect = gr.Checkbox(value=True, label="Run detector", elem_id="run-detector")
                    show_dense = gr.Checkbox(value=False, label="Show dense YOLOS too", elem_id="show-dense", interactive=ready)
                if examples:
                    gr.Examples(examples, inputs=image, label="Examples (public domain / CC0, see assets/examples/LICENSE.md)")
                if coco_examples:
                    gr.Examples(coco_examples, inputs=image, label="COCO images from BAVIT_DATA (with ground truth)")
            with gr.Column(scale=2):
                gr.HTML(_figures(("grid-raw", "BAViT patch grid (before CCA)"), ("grid-cca", "After CCA")),
                        elem_id="grid-view", padding=False)
                gr.HTML(viz.legend_html(viz.GRID_LEGEND), padding=False)
                with gr.Row():
                    sparsity = gr.Markdown(elem_id="sparsity")
                    latency = gr.Markdown(elem_id="latency")
                with gr.Row():
                    tokens = gr.Markdown(elem_id="tokens")
                    gr.HTML(_figures(("curve", "This image: sparsity and speed-up vs threshold"),),
                            elem_id="curve-view", padding=False)
        with gr.Column(elem_id="detections"):
            gr.Markdown("## Detections")
            det_message = gr.Markdown(page.detections_text(explorer.predictor), elem_id="detections-message")
            gr.HTML(_figures(("detections-pruned", "Pruned YOLOS"), ("detections-dense", "Dense YOLOS"),
                             kind="bavit-detections"), padding=False)
        with gr.Column(elem_id="gt-compare"):
            gr.Markdown("## Ground truth vs prediction")
            with gr.Row():
                gt_grid = gr.Image(label="GT patch grid (>10% object pixels = FG)", elem_id="gt-grid", format="jpeg", height=IMAGE_HEIGHT,
                                   interactive=False, visible=False)
                gt_confusion = gr.Image(label="GT vs prediction (after CCA)", elem_id="gt-confusion", format="jpeg", height=IMAGE_HEIGHT,
                                        interactive=False, visible=False)
                gt_stats = gr.Markdown(elem_id="gt-stats")
            gr.HTML(viz.legend_html(viz.CONFUSION_LEGEND), padding=False)
            with gr.Accordion("Paint your own ground truth", open=False, elem_id="gt-paint"):
                editor = gr.ImageEditor(label="Paint the objects with the brush", type="numpy", elem_id="gt-editor",
                                        sources=(), transforms=(), layers=False, height=420, canvas_size=(512, 512),
                                        brush=gr.Brush(colors=["#ff3b30"], default_size=24, color_mode="fixed"))
                editor.blob_storage = server.BoundedBlobs()  # see there: a client could fill it without bound
                gt_apply = gr.Button("Compare with painted GT", elem_id="gt-apply")
        dataset = _dataset_view(explorer) if explorer.dataset is not None else None
        with gr.Row(elem_classes=["bavit-hidden"]):  # the page's wiring to static/grid.js (rendered, not shown)
            page_state = gr.Textbox(elem_id="page-state", label="page state (JSON for grid.js)", max_lines=1)
            # the timer's own channel: a textbox set by two event streams at once can drop a value in the page
            page_news = gr.Textbox(elem_id="page-news", label="timer messages (JSON for grid.js)", max_lines=1)
            page_ack = gr.Textbox(elem_id="page-ack", label="what the page holds (JSON from grid.js)", max_lines=1)
            server_update = gr.Button("server update", elem_id="server-update")  # grid.js clicks these two
            curve_request = gr.Button("curve request", elem_id="curve-request")
        control_inputs = [mode, threshold, target, cca_steps, detect, show_dense]
        shown = {"det_message": det_message, "sparsity": sparsity, "tokens": tokens, "latency": latency,
                 "gt_confusion": gt_confusion, "gt_stats": gt_stats}
        # ticks only while a shown view waits for something it fills in (the events switch it on, it switches off)
        timer = gr.Timer(LATENCY_TICK_S, active=False)
        page_outputs = [page_state, *(shown[key] for key in OUTPUT_KEYS), timer]
        slider_outputs = [page_state, *(shown[key] for key in SLIDER_OUTPUT_KEYS), timer]
        image.change(handlers.page_image, [image, session_state, *control_inputs],
                     [session_state, *page_outputs[:-1], gt_grid, editor, timer], preprocess=False, api_name="page_image",
                     show_api=False, trigger_mode="always_last")
        # A slider runs static/grid.js only (no Python function): it answers grid-only moves in the page, else it
        # clicks #server-update, whose event reads the same controls.
        for control in (threshold, target, cca_steps):
            control.input(None, [*control_inputs, sparsity, tokens, latency, det_message],
                          [sparsity, tokens, latency, det_message], api_name=False, show_progress="hidden",
                          js="(...values) => window.bavitGrid.slider(...values)")
        server_update.click(handlers.page_slider, [session_state, *control_inputs], slider_outputs,
                            api_name="page_slider", show_api=False, show_progress="hidden", **CONTROL_EVENTS)
        for name, control in (("page_detect", detect), ("page_show_dense", show_dense)):
            control.input(handlers.page_controls, [session_state, *control_inputs], page_outputs, api_name=name,
                          show_api=False, **CONTROL_EVENTS)
        mode.input(handlers.page_mode, [session_state, *control_inputs], [threshold, target, *page_outputs],
                   api_name="page_mode", show_api=False, **CONTROL_EVENTS)
        # Cheap and order-free (one CCA setting's base plot, drawn once per image): off the queue, which polls every
        # 50 ms. The session stays safe: page_curve holds the session's gate like every other event.
        curve_request.click(handlers.page_curve, [session_state, cca_steps], page_state, api_name="page_curve",
                            show_api=False, show_progress="hidden", queue=False, preprocess=False)
        # grid.js applies each message; a slider's server answer brings its texts, which it returns while current
        texts = [sparsity, tokens, latency, det_message]
        for channel in (page_state, page_news):
            channel.change(None, [channel, *texts], texts, show_progress="hidden",
                           js="(...values) => window.bavitGrid.receive(...values)")
        # A latency panel that said "warming up" fills itself in once the background timing has its medians: a
        # cheap tick (off the queue, like the curve request) answers nothing until then, and nothing after.
        # The tick's js puts the page's ack (the detection-ladder results it holds) in the hidden #page-ack box.
        tick_inputs = [session_state, *control_inputs, page_ack]
        timer.tick(handlers.page_latency, tick_inputs, [page_news, latency, det_message, timer], preprocess=False,
                   js=f"(...values) => window.bavitGrid.tick({len(tick_inputs)}, ...values)",
                   api_name="page_latency", show_api=False, show_progress="hidden", queue=False)
        # Raw values (preprocess=False): the editor's layers arrive as uploaded files, read under the upload limits
        # (Gradio would decode every layer into an array first, with no limit).
        gt_apply.click(handlers.page_paint, [session_state, editor, *control_inputs],
                       [gt_grid, gt_confusion, gt_stats, page_state], api_name="page_paint", show_api=False,
                       preprocess=False)
        if dataset is not None:
            _wire_dataset_view(handlers, dataset, control_inputs, image)
        add_api(explorer)
    return demo


def _dataset_view(explorer: Explorer) -> dict[str, Any]:
    """Lay out the dataset view (an app with ``--data``): its accordion, scan button, sort choice, sort button,
    summary and gallery; returns them by name."""
    scan = explorer.dataset
    with gr.Accordion(f"Dataset: where pruning costs most ({scan.split})", open=False, elem_id="dataset") as box:
        with gr.Row():
            button = gr.Button(page.DATASET_SCAN_BUTTON, elem_id="dataset-scan", variant="primary", scale=1)
            sort = gr.Radio(list(page.DATASET_SORTS), value=page.DATASET_SORTS[0][1], label="Sort by (most first)",
                            elem_id="dataset-sort", scale=2)
            resort = gr.Button("Sort at the current setting", elem_id="dataset-resort", scale=1)
        summary = gr.Markdown(page.dataset_prompt(scan.split), elem_id="dataset-summary")
        gallery = gr.Gallery(label="The dataset's images, most costly first (click one to open it above)",
                             elem_id="dataset-gallery", columns=4, height=DATASET_GALLERY_HEIGHT, allow_preview=False,
                             object_fit="cover", interactive=False)
    return {"box": box, "scan": button, "sort": sort, "resort": resort, "summary": summary, "gallery": gallery}


def _wire_dataset_view(handlers: Handlers, view: dict[str, Any], control_inputs: list, image: gr.Image) -> None:
    """The dataset view's events: the scan button starts (or follows) the app's one scan, then sorts at the controls
    of its end; opening the accordion, the sort choice and the sort button show the view at the controls of that
    moment (following a scan that runs). The sliders are not hooked (the page answers them without the server): the
    view follows the controls when asked. A click on an image sets the input image, whose change event opens it."""
    inputs, outputs = [view["sort"], *control_inputs], [view["gallery"], view["summary"]]
    events = {**DATASET_EVENTS, "show_progress_on": view["gallery"]}  # the summary says how far the scan is
    view["scan"].click(handlers.dataset_scan, inputs, outputs, api_name="dataset_scan", **events).success(
        handlers.dataset_show, inputs, outputs, api_name="dataset_scanned", **events)
    for name, trigger in (("dataset_show", view["box"].expand), ("dataset_sort", view["sort"].input),
                          ("dataset_resort", view["resort"].click)):
        trigger(handlers.dataset_show, inputs, outputs, api_name=name, **events)
    view["gallery"].select(handlers.dataset_pick, None, [image, view["gallery"]], api_name="dataset_pick",
                           show_api=False, show_progress="hidden").success(
        None, js="() => document.getElementById('input-image').scrollIntoView({behavior: 'smooth'})")


def _figures(*figures: tuple[str, str], kind: str = "") -> str:
    """HTML of captioned canvases that static/draw.js draws (``(elem_id, caption)`` each); ``kind``: a class more
    (``bavit-detections``: shown only while it has detections to draw)."""
    return '<div class="bavit-figures">' + "".join(
        f'<div class="bavit-figure {kind}" id="{elem_id}"><div class="bavit-caption">{caption}</div><canvas></canvas>'
        '<div class="bavit-placeholder">Load an image to see it here.</div></div>' for elem_id, caption in figures
    ) + "</div>"


def create_explorer(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                    backend: str | None = None) -> Explorer:
    """Load the Predictor (and the optional COCO GT) once: the :class:`Explorer` :func:`create_demo` lays out.

    Args:
        bavit: BAViT checkpoint path (default: the shipped ``checkpoints/bavit-small-coco.safetensors``).
        detector: YOLOS hub id or local directory (default ``hustvl/yolos-tiny``); missing weights -> banner.
        data: COCO-format root for GT comparison of its images (``annotations/instances_*.json`` + split dirs).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"onnxruntime-int8"`` (default: the Predictor's).
    """
    kwargs: dict[str, Any] = {"detector": detector or DEFAULT_DETECTOR}
    if bavit:
        kwargs["bavit"] = str(bavit)
    if backend:
        kwargs["backend"] = backend
    predictor = Predictor(**kwargs)
    coco = CocoGroundTruth(data) if data else None
    return Explorer(predictor, coco=coco)


def create_demo(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                coco_examples: int = 4, backend: str | None = None) -> gr.Blocks:
    """Load the Predictor once (:func:`create_explorer`), start the latency warm-up in the background (the page is
    built and served meanwhile; the latency panel says "warming up" until it has medians; the onnxruntime exports
    run in a child process) and build the page.

    Args:
        bavit, detector, data, backend: as :func:`create_explorer`.
        coco_examples: how many COCO images to add to the examples when ``data`` is given.
    """
    # The warm-up exports in a child process (the server's threads keep the GIL), started first so that its imports
    # overlap this process' loading.
    exporter = None if check_backend(backend or DEFAULT_BACKEND) == "torch" else ExportProcess()
    try:
        explorer = create_explorer(bavit=bavit, detector=detector, data=data, backend=backend)
    except BaseException:
        if exporter is not None:
            exporter.close()
        raise
    viz.warm_up()
    explorer.monitor.start(exporter)
    coco = explorer.coco
    return build_demo(explorer, coco_examples=[str(p) for p in coco.examples(coco_examples)] if coco else None)
