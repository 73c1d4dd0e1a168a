"""The annotator widget: Qt glue around :class:`~histosam.napari._annotator.AnnotatorController`.

Workflow: pick the image layer, the model, device and precision, the region (whole image or the visible field;
slides and other multiscale images always use the visible field) → **Compute embedding** (a worker thread, with a
progress bar and Cancel) → click points in *histosam prompts* (positive / negative: Shift+N toggles) and / or draw a
rectangle in *histosam box* → the mask appears in *histosam current object* (on every click when *segment on
click* is on; else **Segment**, Shift+S) → more clicks correct it (the previous mask is fed back) → **Commit**
(Shift+C) writes it into *histosam objects* with a new id (and its class when the model has a class head) →
**Undo commit** (Shift+U), **Clear** (Shift+X).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from histosam.napari._qt import LayerPicker, ModelPicker, device_combo, notify_error, precision_combo

PROMPTS = "histosam prompts"
BOX = "histosam box"
CURRENT = "histosam current object"
OBJECTS = "histosam objects"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
KEYS = {"segment": "Shift-S", "commit": "Shift-C", "clear": "Shift-X", "undo": "Shift-U", "toggle": "Shift-N"}
AUTO_CLASS = "auto (model)"
NO_CLASS = "none"


class AnnotatorWidget(QWidget):
    """Interactive segmentation with histosam in napari (see the module docstring)."""

    def __init__(self, napari_viewer: Any) -> None:
        import napari

        super().__init__()
        self.viewer = napari_viewer
        self.controller: Any = None
        self.worker: Any = None
        self._config: tuple | None = None  # (model, device, precision) the controller was built with
        self._image_layer: Any = None
        self._syncing = False

        self.image_picker = LayerPicker(napari_viewer, napari.layers.Image)
        self.model_picker = ModelPicker()
        self.device = device_combo()
        self.precision = precision_combo()
        self.region = QComboBox()
        self.region.addItems(["whole image", "visible field"])
        self.region.setToolTip("multiscale images (slides) always use the visible field")
        self.embedding_file = QLineEdit()
        self.embedding_file.setPlaceholderText("optional: a file to save / reuse the embedding")
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device)
        form.addRow("precision", self.precision)
        form.addRow("region", self.region)
        form.addRow("embedding file", self.embedding_file)

        self.compute_button = QPushButton("Compute embedding")
        self.compute_button.clicked.connect(self.compute_embedding)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

        self.positive = QRadioButton("positive")
        self.negative = QRadioButton("negative")
        self.positive.setChecked(True)
        self.positive.toggled.connect(self._on_point_mode)
        self.auto_segment = QCheckBox("segment on click")
        self.auto_segment.setChecked(True)
        self.feedback = QCheckBox("feed back the previous mask")
        self.feedback.setChecked(True)
        self.feedback.setToolTip("iterative correction: each Segment gets the previous mask of the object")
        self.class_combo = QComboBox()
        self.class_label = QLabel("class")
        self.class_combo.setVisible(False)
        self.class_label.setVisible(False)

        self.segment_button = QPushButton(f"Segment ({KEYS['segment']})")
        self.commit_button = QPushButton(f"Commit ({KEYS['commit']})")
        self.clear_button = QPushButton(f"Clear ({KEYS['clear']})")
        self.undo_button = QPushButton(f"Undo commit ({KEYS['undo']})")
        self.segment_button.clicked.connect(self.segment)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear)
        self.undo_button.clicked.connect(self.undo)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.compute_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        row = QHBoxLayout()
        row.addWidget(QLabel(f"points ({KEYS['toggle']})"))
        row.addWidget(self.positive)
        row.addWidget(self.negative)
        layout.addLayout(row)
        layout.addWidget(self.auto_segment)
        layout.addWidget(self.feedback)
        row = QHBoxLayout()
        row.addWidget(self.class_label)
        row.addWidget(self.class_combo, 1)
        layout.addLayout(row)
        for a, b in ((self.segment_button, self.commit_button), (self.clear_button, self.undo_button)):
            row = QHBoxLayout()
            row.addWidget(a)
            row.addWidget(b)
            layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._set_ready(False)
        self._bind_keys()

    # ------------------------------------------------------------ key bindings
    def _bind_keys(self) -> None:
        actions = {"segment": self.segment, "commit": self.commit, "clear": self.clear, "undo": self.undo,
                   "toggle": self.toggle_point_mode}
        for name, key in KEYS.items():
            func = actions[name]
            self.viewer.bind_key(key, lambda _viewer, f=func: f(), overwrite=True)

    # --------------------------------------------------------------- embedding
    def _region_box(self, layer: Any) -> tuple[int, int, int, int]:
        from histosam.napari import _region

        if getattr(layer, "multiscale", False) or self.region.currentText() == "visible field":
            return _region.visible_box(self.viewer, layer)
        return _region.whole_box(layer)

    def compute_embedding(self) -> Any:
        """Start the worker (model, region, embedding); returns it (tests wait on it)."""
        from napari.qt.threading import create_worker

        from histosam.napari import _region
        from histosam.napari._annotator import AnnotatorController
        from histosam.napari._workers import embedding_job

        if self.worker is not None:
            return self.worker
        try:
            layer = self.image_picker.layer()
            box = self._region_box(layer)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.status.setText(notify_error(exc))
            return None
        config = (self.model_picker.choice, self.device.currentText(), self.precision.currentText())
        old = self.controller if config == self._config else None

        def factory():
            if old is not None:
                return old
            return AnnotatorController(config[0], device=config[1], precision=config[2])

        path = self.embedding_file.text().strip() or None
        worker = create_worker(embedding_job, factory, lambda: _region.read_box(layer, box), _region.layer_mpp(layer),
                               (box[0], box[1]), path)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda controller: self._on_embedding(controller, layer, config))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_ready(False)
        self.compute_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("starting")
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, value: tuple[str, int, int]) -> None:
        message, done, total = value
        self.progress.setRange(0, max(total, 0))  # (0, 0): busy
        self.progress.setValue(done)
        self.status.setText(f"{message} ({done}/{total})" if total else message)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(notify_error(exc))

    def _on_finished(self) -> None:
        self.worker = None
        self.compute_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)

    def _on_embedding(self, controller: Any, layer: Any, config: tuple) -> None:
        self.controller, self._config, self._image_layer = controller, config, layer
        controller.feedback = self.feedback.isChecked()
        self.progress.setValue(1)
        self._setup_layers(layer)
        self._setup_classes()
        self._set_ready(True)
        h, w = controller.shape
        self.status.setText(f"ready: {w}×{h} px at ({controller.origin[1]}, {controller.origin[0]}); click points "
                            f"in '{PROMPTS}' or draw a box in '{BOX}'")

    def _set_ready(self, ready: bool) -> None:
        for b in (self.segment_button, self.commit_button, self.clear_button, self.undo_button):
            b.setEnabled(ready)

    def _setup_classes(self) -> None:
        names = self.controller.class_names
        self.class_combo.clear()
        if names:
            self.class_combo.addItems([AUTO_CLASS, NO_CLASS, *names[1:]])
        self.class_combo.setVisible(bool(names))
        self.class_label.setVisible(bool(names))

    # ------------------------------------------------------------------ layers
    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _setup_layers(self, image_layer: Any) -> None:
        """Prompt layers in the image's data frame; current-object and objects layers over the region."""
        c = self.controller
        scale = np.asarray(image_layer.scale)[-2:]
        translate = np.asarray(image_layer.translate)[-2:]
        region_translate = translate + np.asarray(c.origin) * scale
        shape = c.shape
        prompts = self._layer(PROMPTS)
        if prompts is None:
            prompts = self.viewer.add_points(np.zeros((0, 2)), name=PROMPTS, size=max(8.0, 0.01 * max(shape)),
                                             features={"positive": np.zeros(0, bool)},
                                             face_color=POSITIVE_COLOR, border_color="white")
            prompts.events.data.connect(self._on_prompts_changed)
        box = self._layer(BOX)
        if box is None:
            box = self.viewer.add_shapes(name=BOX, edge_color="yellow", face_color="transparent",
                                         edge_width=max(2.0, 0.003 * max(shape)))
            box.events.data.connect(self._on_prompts_changed)
        for layer in (prompts, box):
            layer.scale, layer.translate = scale, translate
        current = self._layer(CURRENT)
        if current is None or current.data.shape != shape:
            if current is not None:
                self.viewer.layers.remove(current)
            current = self.viewer.add_labels(np.zeros(shape, np.uint8), name=CURRENT, opacity=0.6)
        current.scale, current.translate = scale, region_translate
        objects = self._layer(OBJECTS)
        same = objects is not None and objects.data.shape == shape and \
            np.allclose(np.asarray(objects.translate)[-2:], region_translate)
        if not same:
            if objects is not None:  # another region: keep the old results under another name
                objects.name = f"{OBJECTS} ({objects.metadata.get('histosam_region', 'previous')})"
            objects = self.viewer.add_labels(np.zeros(shape, np.uint32), name=OBJECTS, opacity=0.5)
            objects.scale, objects.translate = scale, region_translate
            c.next_id = 1
            c.history.clear()
            c.classes.clear()
        else:
            c.next_id = max(c.next_id, int(objects.data.max(initial=0)) + 1)
        objects.metadata.update({"mpp": c.mpp, "histosam_region": f"{c.origin[1]},{c.origin[0]}"})
        self._sync_classes(objects)
        self._clear_prompts()
        self._show_current(None)
        self.viewer.layers.selection.active = prompts
        prompts.mode = "add"
        self._on_point_mode()

    def _sync_classes(self, objects: Any) -> None:
        from histosam.napari._models import class_colors

        c = self.controller
        objects.metadata["histosam_classes"] = dict(c.classes)
        if c.class_names:
            colors = class_colors(c.model, c.class_names)
            objects.metadata["histosam_class_colors"] = {n: col for n, col in zip(c.class_names, colors)}

    def _show_current(self, mask: np.ndarray | None) -> None:
        layer = self._layer(CURRENT)
        if layer is None:
            return
        layer.data = np.zeros(layer.data.shape, np.uint8) if mask is None else mask.astype(np.uint8)

    def _clear_prompts(self) -> None:
        self._syncing = True
        try:
            prompts, box = self._layer(PROMPTS), self._layer(BOX)
            if prompts is not None and len(prompts.data):
                prompts.selected_data = set()
                prompts.data = np.zeros((0, 2))
            if box is not None and len(box.data):
                box.data = []
        finally:
            self._syncing = False

    # ----------------------------------------------------------------- prompts
    def toggle_point_mode(self) -> None:
        (self.negative if self.positive.isChecked() else self.positive).setChecked(True)

    def _on_point_mode(self, *_: Any) -> None:
        prompts = self._layer(PROMPTS)
        if prompts is None:
            return
        positive = self.positive.isChecked()
        prompts.selected_data = set()  # the colour below is for new points only, not the selected ones
        prompts.feature_defaults = {"positive": positive}
        prompts.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR

    def _on_prompts_changed(self, event: Any) -> None:
        action = str(getattr(getattr(event, "action", None), "value", getattr(event, "action", "")))
        if self._syncing or action not in ("added", "removed", "changed", ""):
            return
        if self.auto_segment.isChecked() and self.controller is not None and self.controller.embedding_ready:
            self.segment()

    def _prompt_data(self) -> tuple:
        prompts, box = self._layer(PROMPTS), self._layer(BOX)
        image = self._image_layer
        pts = pos = rect = None
        if prompts is not None and len(prompts.data):
            pts = np.array([image.world_to_data(prompts.data_to_world(p)) for p in prompts.data])[:, -2:]
            feats = prompts.features
            pos = np.asarray(feats["positive"], bool) if "positive" in feats else np.ones(len(pts), bool)
        if box is not None and len(box.data):
            rect = np.array([image.world_to_data(box.data_to_world(v)) for v in box.data[-1]])[:, -2:]
        return pts, pos, rect

    # ----------------------------------------------------------------- actions
    def segment(self) -> np.ndarray | None:
        """Predict the current object from the prompts; returns its mask."""
        if self.controller is None or not self.controller.embedding_ready:
            self.status.setText("compute the embedding first")
            return None
        self.controller.feedback = self.feedback.isChecked()
        try:
            mask = self.controller.segment(*self._prompt_data())
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.status.setText(notify_error(exc))
            return None
        self._show_current(mask if mask.any() else None)
        self.status.setText(f"current object: {int(mask.sum())} px")
        return mask

    def commit(self) -> int | None:
        """Commit the current object into the objects layer; returns its id."""
        objects = self._layer(OBJECTS)
        c = self.controller
        if c is None or objects is None or c.current is None:
            self.status.setText("nothing to commit")
            return None
        class_name = None
        if c.class_names:
            choice = self.class_combo.currentText()
            class_name = c.predict_class(c.current) if choice == AUTO_CLASS else None if choice == NO_CLASS \
                else choice
        object_id = c.commit(objects.data, class_name)
        objects.refresh()
        self._sync_classes(objects)
        self._show_current(None)
        self._clear_prompts()
        self.status.setText(f"committed object {object_id}" + (f" ({class_name})" if class_name else ""))
        return object_id

    def clear(self) -> None:
        if self.controller is not None:
            self.controller.clear_object()
        self._show_current(None)
        self._clear_prompts()
        self.status.setText("cleared")

    def undo(self) -> int | None:
        objects = self._layer(OBJECTS)
        if self.controller is None or objects is None:
            return None
        object_id = self.controller.undo(objects.data)
        objects.refresh()
        self._sync_classes(objects)
        self.status.setText("nothing to undo" if object_id is None else f"removed object {object_id}")
        return object_id
