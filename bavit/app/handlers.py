"""The event functions the page and its ``gradio_client`` endpoints run (:func:`build_handlers`): thin adapters
from component values to :class:`~bavit.app.explorer.Explorer` calls and back to component updates.

They take the components' raw values (no Gradio preprocessing: a client's values are validated once, by
:class:`~bavit.app.session.Controls`) and show input problems as a ``gr.Error`` toast. A superseded event
(``Explorer.update`` returned ``None``) answers ``gr.skip()`` for every output, so the page keeps the newest.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from ..errors import BAViTError
from ..pruning.settings import cca_steps_value
from . import client, panels, viz
from .explorer import Explorer
from .server import ERRORS
from .session import MODE_THRESHOLD, TARGET_MODES, Controls, ImageSession, ViewRecord

log = logging.getLogger(__name__)

# Outputs of every re-render, in order (keys of Explorer.render's view).
VIEW_KEYS = ("grid_raw", "grid_cca", "det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "curve",
             "gt_confusion", "gt_stats")
HIDEABLE = {"det_pruned", "det_dense", "gt_confusion"}
# Outputs of the page's server events besides #page-state (the grids and the curve are drawn by static/draw.js).
PAGE_KEYS = ("det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "gt_confusion", "gt_stats")
SLIDER_KEYS = tuple(key for key in PAGE_KEYS if key != "det_dense")  # a slider never changes the dense panel
# How every control event is queued. One concurrency group: one FIFO queue (arrival order) instead of several, its
# limit the queue's default_concurrency_limit; per-session order and last-event-wins are Explorer.update's job.
# Raw values (preprocess=False): a client's "abc" or 2.5 CCA steps gets the same clear error on every event.
CONTROL_EVENTS: dict[str, Any] = {"trigger_mode": "always_last", "concurrency_id": "controls", "preprocess": False}


def user_errors(fn: Callable) -> Callable:
    """An event function that shows input problems (BAViTError) as a gr.Error toast, and unexpected failures too,
    after logging them.

    The toast is raised after the ``except`` block with no traceback of the failure attached: the failure's frames
    (a refused image's pixels among their locals) are freed now, not when Gradio lets go of the error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            error = exc
        except BAViTError as exc:
            error = gr.Error(str(exc), print_exception=False)
        except MemoryError:
            error = gr.Error("out of memory while processing this image; try a smaller one", print_exception=False)
        except Exception as exc:  # keep the app up and say what happened
            log.exception("handler %s failed", fn.__name__)
            error = gr.Error(f"internal error ({exc.__class__.__name__}: {exc})", print_exception=False)
        error.__traceback__ = error.__context__ = error.__cause__ = None
        ERRORS.remember(error.message)  # for the /call stream's error event (bavit.app.server)
        raise error

    return wrapper


def _controls(mode: Any, threshold: Any, target: Any, cca_steps: Any, detect: Any, show_dense: Any) -> Controls:
    """The controls' raw values as validated :class:`Controls`."""
    return Controls(mode=mode or MODE_THRESHOLD, threshold=threshold, target_sparsity=target, cca_steps=cca_steps,
                    detect=detect, show_dense=show_dense)


def _view_updates(view: dict[str, Any] | None, keys: tuple[str, ...] = VIEW_KEYS,
                  unchanged: frozenset[str] = frozenset()) -> list[Any]:
    """The view outputs in ``keys`` order; ``None`` (a superseded event) leaves them all as they are, and so does
    ``gr.skip()`` for the keys in ``unchanged`` (values the page already shows)."""
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
        unchanged |= {"det_pruned", "det_message"}
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
    detect, show_dense`` (``target``, in percent, drives both target modes). The page's events answer with
    ``#page-state`` (a :mod:`bavit.app.client` message, JSON) and the outputs in :data:`PAGE_KEYS` order
    (:data:`SLIDER_KEYS` for ``page_slider``); the ``gradio_client`` endpoints' (:mod:`bavit.app.endpoints`) with
    the outputs in :data:`VIEW_KEYS` order, the grid and curve images included, and no page state:

    - ``page_image`` / ``on_image(payload, previous_session, *controls)`` -> ``[session, (page_state), *outputs,
      gt_grid, editor]``;
    - ``page_controls``, ``page_slider`` / ``on_controls(session, *controls)`` -> ``[(page_state), *outputs]``;
    - ``page_mode(session, *controls)`` -> ``[threshold visibility, target visibility, page_state, *outputs]``;
    - ``page_paint(session, editor, *controls)`` -> ``[gt_grid, gt_confusion, gt_stats, page_state]``;
    - ``page_curve(session, cca_steps)`` -> page_state (the base plot of that CCA setting).
    """

    page_image: Callable[..., list]
    page_controls: Callable[..., list]
    page_slider: Callable[..., list]
    page_mode: Callable[..., list]
    page_curve: Callable[..., Any]
    page_paint: Callable[..., list]
    on_image: Callable[..., list]
    on_controls: Callable[..., list]


def build_handlers(explorer: Explorer) -> Handlers:
    """The app's event functions around ``explorer``."""

    def page_state(session: ImageSession, view: dict[str, Any] | None, controls: Controls) -> Any:
        return gr.skip() if view is None else client.encode(client.view_message(explorer, session, view, controls))

    def image_event(page: bool, payload: Any, previous: ImageSession | None, *values: Any) -> list[Any]:
        """A new image (or none: cleared): the new session, then the previous one retired (control events still on
        it skip; a running one finishes first)."""
        keys = PAGE_KEYS if page else VIEW_KEYS
        if payload is None:
            if previous is not None:
                previous.retire()
            empty = {key: None for key in VIEW_KEYS}
            empty.update(sparsity="", tokens="", latency="", gt_stats="",
                         det_message=panels.detections_text(explorer.predictor))
            state = [client.encode(client.clear_message())] if page else []
            return [None, *state, *_view_updates(empty, keys), gr.update(value=None, visible=False), None]
        controls = _controls(*values)
        session = explorer.open_image(payload)
        warning = panels.tiny_warning(session, explorer.predictor.bavit.config.img_size)
        if warning:
            gr.Warning(warning)
        view = explorer.update(session, controls)  # a new session: no other event can hold or supersede it yet
        gt_grid = _gt_grid(session)
        if previous is not None:
            previous.retire()
        state = [client.encode(client.image_message(explorer, session, view, controls))] if page else []
        return [session, *state, *_view_updates(view, keys), gr.update(value=gt_grid, visible=gt_grid is not None),
                {"background": session.display, "layers": [], "composite": None}]

    def control_event(keys: tuple[str, ...], page: bool, session: ImageSession | None, *values: Any) -> list[Any]:
        """A control event; a slider's (:data:`SLIDER_KEYS`) leaves out what a slider cannot change."""
        if session is None:
            return [gr.skip()] * (page + len(keys))
        controls = _controls(*values)
        view = explorer.update(session, controls)
        unchanged = _unchanged_by_slider(explorer, session, controls) if keys == SLIDER_KEYS else frozenset()
        return [*([page_state(session, view, controls)] if page else []), *_view_updates(view, keys, unchanged)]

    @user_errors
    def page_image(payload: Any, previous: ImageSession | None, *controls: Any) -> list[Any]:
        return image_event(True, payload, previous, *controls)

    @user_errors  # an endpoint (load_image): its parameters are named for the API
    def on_image(payload: Any, previous: ImageSession | None, mode: Any, threshold: Any, target: Any,
                 cca_steps: Any, detect: Any, show_dense: Any) -> list[Any]:
        return image_event(False, payload, previous, mode, threshold, target, cca_steps, detect, show_dense)

    @user_errors
    def page_controls(session: ImageSession | None, *controls: Any) -> list[Any]:
        return control_event(PAGE_KEYS, True, session, *controls)

    @user_errors
    def page_slider(session: ImageSession | None, *controls: Any) -> list[Any]:
        return control_event(SLIDER_KEYS, True, session, *controls)

    @user_errors  # an endpoint (set_threshold): its parameters are named for the API
    def on_controls(session: ImageSession | None, mode: Any, threshold: Any, target: Any, cca_steps: Any,
                    detect: Any, show_dense: Any) -> list[Any]:
        _controls(mode, threshold, target, cca_steps, detect, show_dense)  # refused even without an image
        return control_event(VIEW_KEYS, False, session, mode, threshold, target, cca_steps, detect, show_dense)

    @user_errors
    def page_mode(session: ImageSession | None, *values: Any) -> list[Any]:
        # The sliders' visibility is skipped only when a newer *mode* event sets it: a newer slider move carries
        # this mode but does not set the visibility.
        mode = values[0]
        visibility = [gr.update(visible=mode not in TARGET_MODES), gr.update(visible=mode in TARGET_MODES)]
        if session is None:
            return visibility + [gr.skip()] * (1 + len(PAGE_KEYS))
        controls = _controls(*values)
        show_mode, view = explorer.change_mode(session, controls)
        return ((visibility if show_mode else [gr.skip(), gr.skip()]) + [page_state(session, view, controls)]
                + _view_updates(view, PAGE_KEYS))

    @user_errors
    def page_curve(session: ImageSession | None, cca_steps: Any) -> Any:
        if session is None:
            return gr.skip()
        steps = cca_steps_value(cca_steps)
        with session.gate.hold():  # in this session's turn order; supersedes no control event
            plot = explorer.curve(session, steps)
            session.record(ViewRecord(cca_steps=steps, curve=plot, point=None))
            return client.encode(client.curve_message(session, plot, steps))

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

    return Handlers(page_image=page_image, page_controls=page_controls, page_slider=page_slider, page_mode=page_mode,
                    page_curve=page_curve, page_paint=page_paint, on_image=on_image, on_controls=on_controls)
