"""Named models: the published checkpoints histosam knows, with download URLs and content hashes.

Hashes are written ``"<algorithm>:<hexdigest>"``; ``xxh128`` is what micro-sam's registry publishes for its files,
``sha256`` what Meta publishes for SAM. An entry's ``decoder_*`` fields name a separate instance-decoder file
(micro-sam/PathoSAM ship the UNETR decoder apart from the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s/{}/download"
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/{}"
_META = "https://dl.fbaipublicfiles.com/segment_anything/{}"


@dataclass(frozen=True)
class FileSpec:
    """One file of a registry entry: download URL (``None`` when packaged), ``"algo:hex"`` hash, cache file name,
    and the path inside the package for packaged files."""

    url: str | None
    hash: str | None
    filename: str
    packaged: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: registry name (``vit_b_histopathology``).
        architecture: builder name (``vit_b``, ``nano``, ...).
        url: download URL of the main checkpoint (``None`` for models shipped inside the package).
        hash: ``"algo:hexdigest"`` of that file (for a packaged model: of the packaged file, checked on every load).
        filename: file name in the cache.
        decoder_url / decoder_hash / decoder_filename: the separate instance-decoder file, if any.
        description, licence: for ``histosam models``.
        packaged: path of a file shipped inside the ``histosam`` package (relative to the package root).
    """

    name: str
    architecture: str
    url: str | None
    hash: str | None
    filename: str
    description: str
    licence: str
    decoder_url: str | None = None
    decoder_hash: str | None = None
    decoder_filename: str | None = None
    packaged: str | None = None
    #: further files by head role, loaded on top of the model: ``((role, url, hash, filename), ...)``
    extra_files: tuple[tuple[str, str, str | None, str], ...] = ()

    @property
    def files(self) -> dict[str, FileSpec]:
        """Every file of the entry by role: ``"model"`` (the main file: encoder, SAM heads and whatever other roles
        it holds), ``"instances"`` (a separate AIS decoder file) and the :attr:`extra_files` roles."""
        out: dict[str, FileSpec] = {}
        if self.url is not None or self.packaged is not None:
            out["model"] = FileSpec(self.url, self.hash, self.filename, self.packaged)
        if self.decoder_url is not None and self.decoder_filename is not None:
            out["instances"] = FileSpec(self.decoder_url, self.decoder_hash, self.decoder_filename)
        for role, url, digest, filename in self.extra_files:
            out[role] = FileSpec(url, digest, filename)
        return out

    @property
    def has_decoder(self) -> bool:
        return self.decoder_url is not None or self.packaged is not None


def _pathosam(size: str, model_id: str, model_hash: str, dec_id: str, dec_hash: str) -> ModelEntry:
    return ModelEntry(
        name=f"vit_{size}_histopathology", architecture=f"vit_{size}", url=_OWNCLOUD.format(model_id),
        hash=f"xxh128:{model_hash}", filename=f"vit_{size}_histopathology.pt",
        description=f"PathoSAM generalist (ViT-{size.upper()}), H&E nuclei; AIS decoder",
        licence="CC BY 4.0 (patho-sam)", decoder_url=_OWNCLOUD.format(dec_id), decoder_hash=f"xxh128:{dec_hash}",
        decoder_filename=f"vit_{size}_histopathology_decoder.pt",
    )


#: sha256 of the shipped ``weights/histosam-nano.pt``, checked every time it is loaded (update it with the file)
PACKAGED_NANO_SHA256 = "sha256:d0c44232da693232c705e820aef10a97bd19987b73de3a6ee8b0dd4f2ebaf689"
#: sha256 of the shipped class head (``weights/histosam-nano-classes.pt``: role ``classes`` only)
PACKAGED_NANO_CLASSES_SHA256 = "sha256:d4ba9d79113a5ab8bbb4771cfb43f28e77056cdb6a871e265bde8c117daf50a3"

#: sha256 of the shipped region model (``weights/histosam-tissue.pt``, float16 storage)
PACKAGED_TISSUE_SHA256 = "sha256:a97d371ac88208680469d36d097c957a9dfc9f0ba49c41f6b68a6fff70e98e9f"

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in [
    ModelEntry("histosam-tissue", "nano", None, PACKAGED_TISSUE_SHA256, "histosam-tissue.pt",
               "histosam's embedded region model: glands at 20x (background / benign gland / malignant gland), "
               "SAM-Path class prompts + second encoder, trained on GlaS; for histosam tissue",
               "GlaS research use only; encoder initialised from histosam-nano (CC BY-NC-SA 4.0)",
               packaged="weights/histosam-tissue.pt"),
    ModelEntry("histosam-nano-classes", "nano", None, PACKAGED_NANO_SHA256, "histosam-nano.pt",
               "histosam-nano + a nucleus-class head (CoNSeP: other, inflammatory, epithelial, spindle-shaped), "
               "shipped as a separate head file", "CC BY-NC-SA 4.0 (MoNuSeg) + CoNSeP research use",
               packaged="weights/histosam-nano.pt",
               extra_files=(("classes", "package:weights/histosam-nano-classes.pt", PACKAGED_NANO_CLASSES_SHA256,
                             "histosam-nano-classes.pt"),)),
    ModelEntry("histosam-nano", "nano", None, PACKAGED_NANO_SHA256, "histosam-nano.pt",
               "histosam's embedded default: compact CNN encoder + SAM decoder + AIS decoder, trained on MoNuSeg",
               "CC BY-NC-SA 4.0 (trained on MoNuSeg)", packaged="weights/histosam-nano.pt"),
    ModelEntry("vit_b", "vit_b", _META.format("sam_vit_b_01ec64.pth"),
               "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "sam_vit_b_01ec64.pth",
               "Meta's Segment Anything ViT-B", "Apache-2.0"),
    ModelEntry("vit_l", "vit_l", _META.format("sam_vit_l_0b3195.pth"),
               "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "sam_vit_l_0b3195.pth",
               "Meta's Segment Anything ViT-L", "Apache-2.0"),
    ModelEntry("vit_h", "vit_h", _META.format("sam_vit_h_4b8939.pth"),
               "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "sam_vit_h_4b8939.pth",
               "Meta's Segment Anything ViT-H", "Apache-2.0"),
    ModelEntry("vit_t", "vit_t", _OWNCLOUD.format("TuDzuwVDHd1ZDnQ"), "xxh128:8eadbc88aeb9d8c7e0b4b60c3db48bd0",
               "vit_t_mobile_sam.pth", "MobileSAM (TinyViT encoder)", "Apache-2.0"),
    _pathosam("b", "sBB4H8CTmIoBZsQ", "ffd1a2cd84570458b257bd95fdd8f974", "KO9AWqynI7SFOBj",
              "6a66194dcb6e36199cbee2214ecf7213"),
    _pathosam("l", "IZgnn1cpBq2PHod", "b591833c89754271023e901281dee3f2", "oIs6VSmkOp7XrKF",
              "46aab7765d4400e039772d5a50b55c04"),
    _pathosam("h", "L7AcvVz7DoWJ2RZ", "bd1856dafc156a43fb3aa705f1a6e92e", "1qAKxy5H0jgwZvM",
              "3ed9f87e46ad5e16935bd8d722c8dc47"),
    ModelEntry("vit_b_lm", "vit_b", _BIOIMAGEIO.format("diplomatic-bug/1.2/files/vit_b.pt"),
               "xxh128:fe9252a29f3f4ea53c15a06de471e186", "vit_b_lm.pt",
               "micro-sam light-microscopy generalist (ViT-B); AIS decoder", "CC BY 4.0 (micro-sam)",
               decoder_url=_BIOIMAGEIO.format("diplomatic-bug/1.2/files/vit_b_decoder.pt"),
               decoder_hash="xxh128:708b15ac620e235f90bb38612c4929ba", decoder_filename="vit_b_lm_decoder.pt"),
]}

#: the model used when none is named
DEFAULT_MODEL = "histosam-nano"

#: URLs users may paste (e.g. from QuPath's SAM extension) → registry names
URL_ALIASES: dict[str, str] = {e.url: e.name for e in REGISTRY.values() if e.url}


def get_entry(name: str) -> ModelEntry:
    """Registry entry by name; a clear error listing the known names otherwise."""
    from histosam.errors import ModelNotAvailableError

    if name in REGISTRY:
        return REGISTRY[name]
    if name in URL_ALIASES:
        return REGISTRY[URL_ALIASES[name]]
    raise ModelNotAvailableError(f"unknown model {name!r}; registered models: {', '.join(sorted(REGISTRY))} "
                                 "(or pass a path to a checkpoint file)")


def list_models() -> list[str]:
    """Names of the registered models (``histosam.load_model(name)`` loads each), the default first."""
    return [DEFAULT_MODEL] + sorted(n for n in REGISTRY if n != DEFAULT_MODEL)
