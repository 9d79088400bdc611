"""The trame-slicer page: slice views of the study and the workflow's panel.

trame-slicer gives the MRML scene, the slice views (rendered on the server, streamed as
images) and the ROI / segmentation display; :class:`~.workflow.Workflow` drives the module's
``SceneLogic`` on that scene. Element ids are stable for tests and scripts: ``load-study``,
``place-roi``, ``run-student``, ``segment-with-teacher``, ``cancel``, ``click-positive``,
``click-negative``, ``click-stop``, ``correct-with-clicks``, ``clear-clicks``, ``click-counts``,
``lesion-table``, ``update-table``, ``save-segmentation``, ``add-to-training-set``,
``add-unlabelled-to-training-set``, ``distil-steps``, ``distil``, ``student-model``, ``status``.
``#status`` also carries the state a script waits for: ``data-busy`` (the running job),
``data-done`` (jobs finished so far), ``data-error``, ``data-model`` (the student file Run
uses), ``data-edits`` (Paint/Erase strokes applied).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from slicer import vtkMRMLMarkupsNode
from trame.app import get_server
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import (SegmentationEffectErase, SegmentationEffectIslands, SegmentationEffectNoTool,
                                       SegmentationEffectPaint, SegmentationEffectScissors)
from trame_slicer.segmentation.segmentation_effect_islands import SegmentationIslandsMode
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from .paths import ensure_module_logic_importable

ensure_module_logic_importable()

from DistillSegModuleLib.EngineRunner import EngineRunner  # noqa: E402
from DistillSegModuleLib.Logic import DEFAULT_STRATEGY, STRATEGIES, LogicError, SceneLogic  # noqa: E402
from DistillSegModuleLib.Nodes import ensureSegmentationConverters  # noqa: E402

from .workflow import TABLE_COLUMNS, Settings, Workflow, tableRows  # noqa: E402

CONTROL_POINT_DEFINED = vtkMRMLMarkupsNode.PointPositionDefinedEvent  # a click placed in a view
PET_OPACITY = 0.4  # the module's fusion (Widget.showStudy)
ROI_FILL_OPACITY = 0.05  # the box often fills the view: its outline and handles are what matter
LAYOUT_ID = "DistillSeg"
# Scissors as in Slicer's Segment Editor by default: erase inside the drawn outline, through every slice.
EFFECTS = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase, "scissors": SegmentationEffectScissors,
           "islands": SegmentationEffectIslands, "none": SegmentationEffectNoTool}
EFFECT_HINTS = {"paint": "Paint: drag in a slice view to add to the lesion",
                "erase": "Erase: drag in a slice view to remove from the lesion",
                "scissors": "Scissors: draw an outline in a slice view; what is inside goes, on every slice",
                "islands": "Islands: click a lesion in a slice view to remove it (a false positive)"}
DEFAULT_STEPS = 200


class WebApp:
    """One server, one scene, one study at a time (trame keeps one state per process:
    several users need several processes, e.g. behind trame's launcher)."""

    def __init__(self, settings: Settings, token: str | None = None, server=None) -> None:
        self.server = server or get_server(client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.token = token
        self.started = time.monotonic()
        self.slicer = SlicerApp()
        ensureSegmentationConverters()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        views = [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view()]
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, views))
        self.layout_manager.set_layout(LAYOUT_ID)
        engine_args = ["--threads", str(settings.threads)] if settings.threads else []
        self.runner = EngineRunner(python=settings.python, engine_args=engine_args, schedule=self._schedule,
                                   onEngineStopped=lambda reason: self._say(f"the engine stopped ({reason})"))
        self.logic = SceneLogic(self.slicer.scene, self.runner, python=settings.python)
        self.workflow = Workflow(self.logic, settings, onChange=self.push)
        self.done = 0
        self.editor = self.slicer.segmentation_editor
        self.editor.segmentation_modified.connect(self._on_segmentation_edited)
        self._init_state()
        self._build_ui()
        self.ctrl.on_server_ready.add(self._on_ready)
        self.ctrl.on_server_exited.add(lambda **_: self.logic.cleanup())

    # ----------------------------------------------------------------- plumbing

    @staticmethod
    def _schedule(seconds: float, function) -> None:
        """The runner's poll timer: on the server's event loop (as Slicer's QTimer)."""
        asyncio.get_event_loop().call_later(seconds, function)

    def _on_ready(self, **_) -> None:
        self.logic.warmUpEngine()  # torch and MONAI import while the user looks at the study
        print(f"ready after {time.monotonic() - self.started:.1f} s", flush=True)

    def _say(self, text: str, error: bool = True) -> None:
        self.workflow.status, self.workflow.error = text, error
        self.push()

    def push(self) -> None:
        """Copy the workflow's state into trame's (sent to the browser)."""
        w = self.workflow
        with self.state:
            self.state.status = w.status
            self.state.status_error = w.error
            self.state.busy = w.busy
            self.state.progress = None if w.progress is None else round(100 * w.progress)
            self.state.lesion_rows = tableRows(w.rows)
            self.state.roi_text = w.roiText
            self.state.saved_path = str(w.savedPath or "")
            self.state.case_id = w.caseId
            self.state.loaded = w.ct is not None
            self.state.has_roi = w.roi is not None
            self.state.has_segmentation = w.segmentation is not None
            self.state.model = str(w.modelPath or "")
            if self.models is None or (w.modelPath is not None
                                       and str(w.modelPath) not in {m["value"] for m in self.models}):
                self.models = [{"title": f"{e.title} ({'bundled' if e.source == 'bundled' else 'yours'})",
                                "value": str(e.path)} for e in w.studentModels()]  # checks files: not every push
            self.state.models = self.models
            self.state.done = self.done
            self.state.has_training_set = w.settings.trainingSet is not None
            self.state.effect = self.effect
            self.state.clicks_positive, self.state.clicks_negative = w.clickCounts()
            self.state.placing = self.placing
            self.state.edits = self.edits

    def _init_state(self) -> None:
        self.state.trame__title = "DistillSeg"
        self.state.ct_path = ""
        self.state.pet_path = ""
        self.state.distil_steps = DEFAULT_STEPS
        self.state.strategy = DEFAULT_STRATEGY
        self.effect = "none"
        self.placing = ""  # "positive" or "negative" while clicks are being placed
        self.observed: set[str] = set()  # the click lists whose new points update the page
        self.edits = 0
        self.models: list[dict] | None = None  # the student list, read again when a new student appears
        self.push()
        self.state.change("model")(self._on_model_changed)

    def _on_model_changed(self, model, **_) -> None:
        if model and Path(model) != self.workflow.modelPath:
            self.workflow.selectModel(model)

    def _guarded(self, action):
        """Run a button's action; a :class:`LogicError` becomes the status line (nothing changes)."""
        try:
            action()
        except LogicError as error:
            self._say(str(error))
        except Exception as error:  # never leave the page without an answer
            self._say(f"internal error: {type(error).__name__}: {error}")
            raise

    def _finished(self, job) -> None:
        if job.ok and job.segmentationNode is not None:
            self.set_effect("none")  # the editor follows the new result from the next stroke on
        self.done += 1
        self.push()

    # ----------------------------------------------------------------- correction (Segment Editor effects)

    def set_effect(self, name: str) -> None:
        """Paint, Erase, Scissors or Islands on the result's first segment in the slice views (``"none"``: stop)."""
        if name != "none":
            self.workflow._requireSegmentation()
            if self.editor.active_segmentation_node is not self.workflow.segmentation:
                self.editor.set_active_segmentation(self.workflow.segmentation, self.workflow.ct)
        if self.placing:
            self.stop_clicks()  # a left click is either a click prompt or an effect's, never both
        effect = self.editor.set_active_effect_type(EFFECTS[name])
        if name == "islands":
            effect.set_island_mode(SegmentationIslandsMode.REMOVE_SELECTED)
        self.effect = name
        self.workflow.status = EFFECT_HINTS.get(name, self.workflow.status)
        self.push()

    def _on_segmentation_edited(self, *_) -> None:
        """A stroke ended: the lesion table follows the corrected segmentation."""
        if self.effect == "none" or self.workflow.segmentation is None:
            return
        self.edits += 1
        self.workflow.savedPath = None  # the saved file no longer matches what is shown
        self._guarded(self.workflow.refreshTable)

    # ----------------------------------------------------------------- display

    def show_study(self) -> None:
        """CT in the background, PET (PET colour map, set by the logic) over it."""
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(self.workflow.ct)
        display.show_volume_in_slice_foreground(self.workflow.pet)
        for view in self.slicer.view_manager.get_slice_views():
            view.set_foreground_opacity(PET_OPACITY)
        display.reset_views()

    def center_on(self, bounds) -> None:
        """Every slice view through the centre of ``bounds`` (RAS mm)."""
        centre = [(bounds[i] + bounds[i + 3]) / 2 for i in range(3)]
        self.slicer.display_manager.reset_views()  # fitted to the browser's view size, known by now
        nodes = self.slicer.scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            nodes.GetItemAsObject(i).JumpSliceByCentering(*centre)

    # ----------------------------------------------------------------- actions

    def load(self, ct: str, pet: str) -> None:
        self.workflow._requireIdle()
        self.set_effect("none")  # the editor lets go of the old segmentation (and placing stops) before removal
        self.workflow.load(ct, pet)
        self.state.ct_path, self.state.pet_path = str(ct), str(pet)
        self.show_study()
        self.push()

    def on_load(self, ct: str, pet: str) -> None:
        """The paths come with the click (what the fields show), not from the synced state,
        which may lag behind the click."""
        self._guarded(lambda: self.load(ct, pet))

    def on_place_roi(self) -> None:
        def place() -> None:
            self.center_on(self.workflow.placeRoi())
            self.workflow.roi.GetDisplayNode().SetFillOpacity(ROI_FILL_OPACITY)

        self._guarded(place)

    def on_run(self) -> None:
        self._guarded(lambda: self.workflow.run(self._finished))

    def on_teacher(self) -> None:
        self._guarded(lambda: self.workflow.segmentWithTeacher(onDone=self._finished))

    def on_cancel(self) -> None:
        self._guarded(self.workflow.cancel)

    def on_update_table(self) -> None:
        self._guarded(self.workflow.refreshTable)

    def on_save(self) -> None:
        self._guarded(self.workflow.save)

    def place_clicks(self, positive: bool) -> None:
        """Each left click in a slice view adds a positive (or negative) click until 'Stop clicking'."""
        if not self.workflow.takesPrompts():
            model = self.workflow.modelPath.name if self.workflow.modelPath else "selected"
            raise LogicError(f"the student {model} takes no prompts: select a promptable one (trained with "
                             "--promptable) for clicks")
        self.set_effect("none")  # a Segment Editor effect would take the clicks
        node = self.workflow.clickList(positive)
        if node.GetID() not in self.observed:  # Slicer's own observers make HasObserver() true already
            # After the placing widget has finished with the point, or it is not counted yet.
            node.AddObserver(CONTROL_POINT_DEFINED, lambda *_: asyncio.get_event_loop().call_soon(self.push))
            self.observed.add(node.GetID())
        self.slicer.markups_logic.place_node(node, persistent=True)
        self.placing = "positive" if positive else "negative"
        self.workflow.status = ("click in a slice view on what the result missed" if positive
                                else "click in a slice view on what the result wrongly includes")
        self.push()

    def stop_clicks(self) -> None:
        self.slicer.markups_logic.disable_place_mode()
        self.placing = ""
        self.push()

    def on_correct(self) -> None:
        def correct() -> None:
            self.stop_clicks()
            self.workflow.correctWithClicks(self._finished)

        self._guarded(correct)

    def on_add(self) -> None:
        self._guarded(self.workflow.addToTrainingSet)

    def on_add_unlabelled(self) -> None:
        self._guarded(lambda: self.workflow.addToTrainingSet(labelled=False))

    def on_distil(self, steps, strategy: str) -> None:
        def distil() -> None:
            try:
                count = int(steps)
            except (TypeError, ValueError):
                raise LogicError(f"steps must be a whole number (got {steps!r})") from None
            self.workflow.distil(count, strategy, onDone=self._finished)

        self._guarded(distil)

    # ----------------------------------------------------------------- page

    def _build_ui(self) -> None:
        with VAppLayout(self.server, theme="dark") as self.ui:
            with v3.VAppBar(density="compact"):
                v3.VToolbarTitle("DistillSeg: PET/CT segmentation (research use, not for clinical use)")
            with v3.VNavigationDrawer(permanent=True, width=420):
                with v3.VContainer(classes="pa-2"):
                    self._study_panel()
                    v3.VDivider(classes="my-2")
                    self._segmentation_panel()
                    v3.VDivider(classes="my-2")
                    self._training_panel()
                    v3.VDivider(classes="my-2")
                    html.Div("{{ status }}", id="status", classes="text-body-2",
                             style=("status_error ? 'color: #ff6e6e' : ''",),
                             raw_attrs=[':data-busy="busy"', ':data-done="done"', ':data-error="status_error"',
                                        ':data-model="model"', ':data-edits="edits"'])
            with v3.VMain(), html.Div(style="height: calc(100vh - 48px); display: flex;"):
                self.layout_manager.initialize_layout_grid(self.ui)

    def _study_panel(self) -> None:
        html.Div("Study", classes="text-subtitle-1")
        v3.VTextField(v_model=("ct_path",), label="CT (file or DICOM folder)", density="compact", id="ct-path",
                      hide_details=True, classes="mb-1")
        v3.VTextField(v_model=("pet_path",), label="PET (file or DICOM folder)", density="compact", id="pet-path",
                      hide_details=True, classes="mb-1")
        v3.VBtn("Load", id="load-study", click=(self.on_load, "[ct_path, pet_path]"), disabled=("!!busy",),
                size="small")

    def _segmentation_panel(self) -> None:
        html.Div("Segment", classes="text-subtitle-1")
        v3.VSelect(v_model=("model",), items=("models",), label="Student used by Run", density="compact",
                   id="student-model", hide_details=True, classes="mb-1")
        with html.Div(classes="d-flex flex-wrap ga-1"):
            v3.VBtn("Place ROI at PET hot spot", id="place-roi", click=self.on_place_roi,
                    disabled=("!loaded || !!busy",), size="small")
            v3.VBtn("Run", id="run-student", click=self.on_run, color="primary",
                    disabled=("!loaded || !!busy",), size="small")
            v3.VBtn("Segment with teacher", id="segment-with-teacher", click=self.on_teacher,
                    disabled=("!has_roi || !!busy",), size="small")
            v3.VBtn("Cancel", id="cancel", click=self.on_cancel, disabled=("!busy",), size="small")
        html.Div("ROI {{ roi_text }}", v_if=("roi_text",), id="roi-text", classes="text-caption")
        with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
            for sign, title in ((True, "Click +"), (False, "Click -")):
                name = "positive" if sign else "negative"
                v3.VBtn(title, id=f"click-{name}", size="small",
                        click=lambda sign=sign: self._guarded(lambda: self.place_clicks(sign)),
                        disabled=("!has_segmentation || !!busy",),
                        color=(f"placing === '{name}' ? 'primary' : undefined",))
            v3.VBtn("Stop clicking", id="click-stop", click=lambda: self._guarded(self.stop_clicks),
                    disabled=("!placing",), size="small")
            v3.VBtn("Correct with clicks", id="correct-with-clicks", click=self.on_correct, size="small",
                    disabled=("!has_segmentation || !!busy || clicks_positive + clicks_negative === 0",))
            v3.VBtn("Clear clicks", id="clear-clicks", click=lambda: self._guarded(self.workflow.clearClicks),
                    disabled=("clicks_positive + clicks_negative === 0",), size="small")
        html.Div("clicks: {{ clicks_positive }} +, {{ clicks_negative }} -", id="click-counts",
                 classes="text-caption")
        v3.VProgressLinear(model_value=("progress || 0",), v_show=("progress !== null",), id="job-progress",
                           height=6, color="primary", classes="my-1")
        # Six columns in the 420-pixel panel: small type and narrow padding, or TLG scrolls out of sight.
        with v3.VTable(density="compact", id="lesion-table", style="font-size: 0.78rem"):
            with html.Thead(), html.Tr():
                for _, title, unit, _ in TABLE_COLUMNS:
                    html.Th(f"{title}" + (f" ({unit})" if unit else ""), classes="px-1")
            with html.Tbody():
                with html.Tr(v_for="(row, i) in lesion_rows", key="i"):
                    for _, title, _, _ in TABLE_COLUMNS:
                        html.Td(f"{{{{ row['{title}'] }}}}", classes="px-1")
        with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
            v3.VBtn("Update table", id="update-table", click=self.on_update_table,
                    disabled=("!has_segmentation || !!busy",), size="small")
            v3.VBtn("Save segmentation", id="save-segmentation", click=self.on_save,
                    disabled=("!has_segmentation",), size="small")
        with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
            for name, title in (("paint", "Paint"), ("erase", "Erase"), ("scissors", "Scissors"),
                                ("islands", "Remove lesion"), ("none", "Stop editing")):
                v3.VBtn(title, id=f"effect-{name}", click=lambda name=name: self._guarded(lambda: self.set_effect(name)),
                        disabled=("!has_segmentation || !!busy",), size="small",
                        color=(f"effect === '{name}' ? 'primary' : undefined",))
        html.Div("saved {{ saved_path }}", v_if=("saved_path",), id="saved-path", classes="text-caption")

    def _training_panel(self) -> None:
        html.Div("Learn", classes="text-subtitle-1")
        v3.VBtn("Add to training set", id="add-to-training-set", click=self.on_add,
                disabled=("!has_segmentation || !has_training_set",), size="small", classes="mb-1")
        v3.VBtn("Add without segmentation", id="add-unlabelled-to-training-set", click=self.on_add_unlabelled,
                disabled=("!loaded || !has_training_set",), size="small", classes="mb-1")
        html.Div("case {{ case_id }}", v_if=("case_id",), id="case-id", classes="text-caption")
        with html.Div(classes="d-flex ga-1 align-center"):
            v3.VSelect(v_model=("strategy",), items=("strategies", list(STRATEGIES)), label="Strategy",
                       density="compact", hide_details=True, id="distil-strategy")
            v3.VTextField(v_model_number=("distil_steps",), type="number", label="Steps", density="compact",
                          hide_details=True, id="distil-steps", style="max-width: 100px")
            v3.VBtn("Distil", id="distil", click=(self.on_distil, "[distil_steps, strategy]"),
                    disabled=("!has_training_set || !!busy",), size="small")

    def start(self, host: str, port: int) -> None:
        kwargs = {"open_browser": False, "show_connection_info": False, "host": host, "port": port}
        if self.token is not None:
            self.server.cli.set_defaults(authKey=self.token)  # wslink checks it on every websocket
        self.server.start(**kwargs)
