"""Small Qt pieces shared by the widgets (model picker, image-layer picker, messages)."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from histosam.napari._models import DEFAULT_CHOICE, device_choices, model_choices


class ModelPicker(QWidget):
    """An editable combo box of the registry's models (the embedded default first) plus a file browser."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.addItems(model_choices())
        self.combo.setToolTip("a registered model (`histosam models`), or type / browse a checkpoint path")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.setToolTip("choose a checkpoint file")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All (*)")
        if path:
            self.combo.setEditText(path)

    @property
    def choice(self) -> str:
        return self.combo.currentText().strip() or DEFAULT_CHOICE

    def set_choice(self, text: str) -> None:
        self.combo.setEditText(text)


def device_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItems(device_choices())
    return combo


def precision_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItems(["auto", "fp32", "bf16"])
    combo.setToolTip("auto: bf16 where the hardware has it, else fp32; fp32: exact")
    return combo


class LayerPicker(QComboBox):
    """The viewer's layers of one type, kept up to date."""

    def __init__(self, viewer: Any, layer_type: type, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer, self.layer_type = viewer, layer_type
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, self.layer_type)]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif names:  # the newest image
            self.setCurrentIndex(len(names) - 1)
        self.blockSignals(False)

    def layer(self) -> Any:
        name = self.currentText()
        if not name or name not in self.viewer.layers:
            from histosam.errors import HistosamError

            raise HistosamError("open an image first")
        return self.viewer.layers[name]


def notify_error(exc: BaseException) -> str:
    """Show an error in napari's notifications; returns its one-line text."""
    from napari.utils.notifications import show_error

    from histosam.errors import HistosamError

    text = str(exc) if isinstance(exc, HistosamError) else f"{type(exc).__name__}: {exc}"
    show_error(text)
    return text
