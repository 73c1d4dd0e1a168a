"""The automatic segmentation widget: Qt glue around :func:`~histosam.napari._automatic.run_automatic`.

AIS (or AMG) on the whole image, the visible field, or the last shape of the *histosam ROI* layer, at the model's
working resolution (``mpp``: the image layer's ``metadata["mpp"]``, else the field). The run happens in a worker
thread. Results: a Labels layer of the nuclei (placed at the region's offset); with a class head, a Labels layer of
the classes coloured by class and a Points layer of nucleus centroids with their class. With a region model (a
tissue head, e.g. histosam-tissue): tissue regions instead (:func:`histosam.tasks.tissue.segment_tissue`): a
Labels layer of the region instances (written as QuPath annotations), a Labels layer of the class map coloured
with the model's class colours, and a Shapes layer of the region outlines with ``id`` and ``class`` features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from histosam.napari._automatic import SHOWN_PARAMS
from histosam.napari._qt import LayerPicker, ModelPicker, device_combo, notify_error, precision_combo

ROI = "histosam ROI"
REGIONS = ("whole image", "visible field", "ROI layer")


class AutomaticWidget(QWidget):
    """Automatic nucleus segmentation (see the module docstring)."""

    def __init__(self, napari_viewer: Any) -> None:
        import napari

        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self._defaults_of: str | None = None  # the model whose defaults the parameter fields show
        self.last_result: Any = None
        self.image_picker = LayerPicker(napari_viewer, napari.layers.Image)
        self.image_picker.currentTextChanged.connect(self._on_image)
        self.model_picker = ModelPicker()
        self.device = device_combo()
        self.precision = precision_combo()
        self.mode = QComboBox()
        self.mode.addItems(["ais", "amg"])
        self.region = QComboBox()
        self.region.addItems(REGIONS)
        self.mpp = QDoubleSpinBox()
        self.mpp.setDecimals(4)
        self.mpp.setRange(0.0, 100.0)
        self.mpp.setSingleStep(0.05)
        self.mpp.setSpecialValueText("model's resolution")
        self.mpp.setToolTip("µm/px of the image (0: take the image to be at the model's resolution)")
        self.typed = QCheckBox("typed nuclei (class head)")
        self.typed.setChecked(True)
        self.typed.setToolTip("with a model that has a class head (histosam-nano-classes): a class per nucleus")
        self.params: dict[str, QDoubleSpinBox | QSpinBox] = {}
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device)
        form.addRow("precision", self.precision)
        form.addRow("mode", self.mode)
        form.addRow("region", self.region)
        form.addRow("µm/px", self.mpp)
        form.addRow(self.typed)
        for key in SHOWN_PARAMS:
            if key == "min_size":
                box: QDoubleSpinBox | QSpinBox = QSpinBox()
                box.setRange(0, 10**6)
            else:
                box = QDoubleSpinBox()
                box.setDecimals(3)
                box.setRange(0.0, 10.0)
                box.setSingleStep(0.05)
            box.setToolTip("the model's default until you change it")
            self.params[key] = box
            form.addRow(key.replace("_", " "), box)
        self.roi_button = QPushButton("Draw ROI")
        self.roi_button.clicked.connect(self.add_roi_layer)
        self.defaults_button = QPushButton("Model defaults")
        self.defaults_button.clicked.connect(self.load_defaults)
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.roi_button)
        row.addWidget(self.defaults_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._on_image()

    # ------------------------------------------------------------------ inputs
    def _on_image(self, *_: Any) -> None:
        from histosam.napari._region import layer_mpp

        try:
            layer = self.image_picker.layer()
        except Exception:  # noqa: BLE001 - no image yet
            return
        mpp = layer_mpp(layer)
        self.mpp.setValue(mpp or 0.0)
        if getattr(layer, "multiscale", False) and self.region.currentText() == "whole image":
            self.region.setCurrentText("visible field")

    def add_roi_layer(self) -> Any:
        """A Shapes layer for the ROI, in rectangle mode."""
        if ROI in self.viewer.layers:
            layer = self.viewer.layers[ROI]
        else:
            try:
                image = self.image_picker.layer()
                scale, translate = image.scale, image.translate
            except Exception:  # noqa: BLE001
                scale, translate = (1, 1), (0, 0)
            layer = self.viewer.add_shapes(name=ROI, edge_color="cyan", face_color="transparent", scale=scale,
                                           translate=translate)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.region.setCurrentText("ROI layer")
        return layer

    def set_params(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if key in self.params:
                self.params[key].setValue(int(value) if key == "min_size" else float(value))

    def load_defaults(self) -> None:
        """Fill the parameters with the chosen model's defaults (loads the model)."""
        from histosam.napari._automatic import default_params
        from histosam.napari._models import get_model

        try:
            model = get_model(self.model_picker.choice, self.device.currentText())
        except Exception as exc:  # noqa: BLE001
            self.status.setText(notify_error(exc))
            return
        self.set_params(default_params(model))
        self._defaults_of = self.model_picker.choice

    def _box(self, layer: Any) -> tuple[int, int, int, int]:
        from histosam.napari import _region

        region = self.region.currentText()
        if region == "visible field":
            return _region.visible_box(self.viewer, layer)
        if region == "ROI layer":
            return _region.shapes_box(self.viewer.layers[ROI] if ROI in self.viewer.layers else None, layer)
        return _region.whole_box(layer)

    # --------------------------------------------------------------------- run
    def run(self) -> Any:
        """Start the worker; returns it (tests wait on it)."""
        from napari.qt.threading import create_worker

        from histosam.napari import _region
        from histosam.napari._automatic import run_automatic
        from histosam.napari._models import get_model
        from histosam.napari._workers import automatic_job

        if self.worker is not None:
            return self.worker
        try:
            layer = self.image_picker.layer()
            box = self._box(layer)
        except Exception as exc:  # noqa: BLE001
            self.status.setText(notify_error(exc))
            return None
        choice, device, precision = self.model_picker.choice, self.device.currentText(), self.precision.currentText()
        mode, mpp, typed = self.mode.currentText(), self.mpp.value() or None, self.typed.isChecked()
        # the fields count once they show this model's defaults (or the user's values on top of them)
        params = {k: w.value() for k, w in self.params.items()} if self._defaults_of == choice and mode == "ais" \
            else {}

        def run_one(image: np.ndarray, model: Any, origin: tuple[int, int]):
            return run_automatic(image, model, mode=mode, mpp=mpp, typed=None if typed else False, origin=origin,
                                 device=device, precision=precision, **params)

        worker = create_worker(automatic_job, lambda: get_model(choice, device),
                               lambda: _region.read_box(layer, box), run_one, (box[0], box[1]))
        worker.yielded.connect(lambda v: self.status.setText(v[0]))
        worker.returned.connect(lambda out: self._on_result(out, layer, choice))
        worker.errored.connect(lambda exc: self.status.setText(notify_error(exc)))
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop before the segmentation starts, or drop its result (a running segmentation ends on its own)."""
        if self.worker is not None:
            self.worker.quit()
            self._cancelled = self.worker

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)

    def _on_result(self, out: tuple, image_layer: Any, choice: str) -> None:
        from histosam.napari._automatic import RegionResult, default_params

        if getattr(self, "_cancelled", None) is self.worker and self.worker is not None:
            self.status.setText("cancelled")
            return
        model, result = out
        self.last_result = result
        if isinstance(result, RegionResult):
            self.add_region_layers(result, image_layer)
            n = int(len(result.instance_classes))
            counts = ", ".join(f"{k} {c}" for c, k in result.counts().items())
            self.status.setText(f"{n} tissue regions" + (f": {counts}" if counts else ""))
            return
        if self._defaults_of != choice and self.mode.currentText() == "ais":
            self.set_params(default_params(model))
            self._defaults_of = choice
        self.add_result_layers(result, image_layer)
        n = int(result.labels.max(initial=0))
        counts = ""
        if result.typed:
            names = result.class_of()
            counts = ": " + ", ".join(f"{names.count(c)} {c}" for c in result.class_names[1:])
        self.status.setText(f"{n} nuclei{counts}")

    @staticmethod
    def _placement(result: Any, image_layer: Any) -> tuple[np.ndarray, np.ndarray, dict]:
        scale = np.asarray(image_layer.scale)[-2:]
        translate = np.asarray(image_layer.translate)[-2:] + np.asarray(result.origin) * scale
        meta = {"mpp": (image_layer.metadata or {}).get("mpp"), "histosam_region": f"{result.origin[1]},"
                f"{result.origin[0]}"}
        return scale, translate, meta

    def add_region_layers(self, result: Any, image_layer: Any) -> list:
        """Tissue regions (a region model's :class:`~histosam.napari._automatic.RegionResult`): region instances
        (Labels; their metadata makes the writer write QuPath annotations), the class map coloured with the
        model's class colours (Labels) and the outlines (Shapes, ``id`` and ``class`` features)."""
        from napari.utils.colormaps import DirectLabelColormap

        scale, translate, meta = self._placement(result, image_layer)
        base = image_layer.name
        colors = dict(zip(result.class_names, result.colors))
        regions = self.viewer.add_labels(
            result.instances, name=f"{base} regions", scale=scale, translate=translate, opacity=0.5,
            metadata=dict(meta, histosam_classes=dict(result.instance_classes), histosam_class_colors=colors,
                          histosam_tissue_classes=list(result.class_names)))
        cmap = {k: np.array([*result.colors[k], 255]) / 255.0 for k in range(1, len(result.class_names))}
        cmap[None] = np.zeros(4)
        cmap[0] = np.zeros(4)
        classes = self.viewer.add_labels(result.class_map, name=f"{base} tissue classes", scale=scale,
                                         translate=translate, opacity=0.4,
                                         colormap=DirectLabelColormap(color_dict=cmap),
                                         metadata=dict(meta, class_names=list(result.class_names)))
        polys, ids, names = [], [], []
        for i, geom in result.polygons.items():
            for part in getattr(geom, "geoms", [geom]):  # a MultiPolygon: one shape per part (holes not drawn)
                xy = np.asarray(part.exterior.coords)[:-1]
                # histosam's outline convention (pixel (r, c) = [c, c+1) × [r, r+1)) → napari's (pixel centres at
                # integer coordinates): half a pixel up and left; (x, y) → (row, col)
                polys.append(xy[:, ::-1] - 0.5)
                ids.append(int(i))
                names.append(result.instance_classes.get(int(i), ""))
        edge = [np.array([*colors.get(n, (255, 255, 255)), 255]) / 255.0 for n in names]
        outlines = self.viewer.add_shapes(
            polys, shape_type="polygon", name=f"{base} region outlines", scale=scale, translate=translate,
            features={"id": np.asarray(ids, int), "class": np.asarray(names, dtype=object)},
            edge_color=np.array(edge) if edge else "white", face_color="transparent", edge_width=2,
            metadata=dict(meta), ndim=2)
        return [regions, classes, outlines]

    def add_result_layers(self, result: Any, image_layer: Any) -> list:
        """Labels (+ class labels and centroid points when typed) for ``result``, over the image layer."""
        from napari.utils.colormaps import DirectLabelColormap

        scale, translate, meta = self._placement(result, image_layer)
        base = image_layer.name
        layers = []
        labels = self.viewer.add_labels(result.labels, name=f"{base} nuclei", scale=scale, translate=translate,
                                        opacity=0.5, metadata=dict(meta))
        layers.append(labels)
        if result.typed:
            ids = np.arange(1, len(result.classes) + 1)
            labels.metadata["histosam_classes"] = dict(zip(ids.tolist(), result.class_of()))
            labels.metadata["histosam_class_colors"] = dict(zip(result.class_names, result.colors))
            colors = {k: np.array([*result.colors[k], 255]) / 255.0 for k in range(1, len(result.class_names))}
            colors[None] = np.zeros(4)
            colors[0] = np.zeros(4)
            classes = self.viewer.add_labels(result.class_map(), name=f"{base} nucleus classes", scale=scale,
                                             translate=translate, opacity=0.6,
                                             colormap=DirectLabelColormap(color_dict=colors),
                                             metadata=dict(meta, class_names=list(result.class_names)))
            layers.append(classes)
            face = [np.array([*result.colors[k], 255]) / 255.0 for k in result.classes]
            points = self.viewer.add_points(
                result.centroids, name=f"{base} nucleus centroids", scale=scale,
                translate=np.asarray(image_layer.translate)[-2:], size=6,
                features={"id": ids, "class": result.class_of()},
                face_color=np.array(face) if face else "white", border_width=0, visible=False)
            layers.append(points)
        return layers
