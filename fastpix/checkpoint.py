"""The run folder: its layout, checkpoints written as consistent sets, its lock, and loading a generator from it.

<checkpoints_dir>/<name>/
  latest_net_G.safetensors, latest_net_D.safetensors   weights (+ <epoch>_net_{G,D}, iter_<N>_net_{G,D})
  latest_train_state.pt   optimizers, RNG, epoch, iteration; torch.load(weights_only=True) reads it
  checkpoint.json         the manifest of the newest complete save: its iteration, each file's size and sha256
  config.json             the model/data/train configuration of the run
  metrics.jsonl           one JSON line per logged iteration
  .lock                   held (flock) by the one `fastpix train` writing the folder
A reference checkpoint (<epoch>_net_G.pth, a plain state_dict) is read wherever a fastpix one is.

Why a manifest written last rather than a generation folder: the names above are what the README, `fastpix test`
and a reference user look for, so the newest set must live under them. A save (write_set) is a small redo log:
  1. every file of the set is written under a temporary name (.tmp-<iteration>-<name>) and fsynced: a kill or a
     full disk here leaves the previous set and its manifest as they were (the temporaries are removed later);
  2. checkpoint.json is replaced atomically, naming the new files, their temporaries and hashes: the commit;
  3. the temporaries are renamed over the old files. A kill among these renames is finished by `recover` at the
     next start, from the manifest, so a resume sees exactly one set, which load_set verifies against the hashes.
Until that start, readers (`fastpix test`, predict, eval, export) read such a file from the temporary the manifest
names, verified by its hash (committed_bytes): they never rename, as a training process may hold the folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil

import torch
from safetensors.torch import load, load_file, save

from fastpix.errors import CheckpointError
from fastpix.files import TMP_PREFIX, atomic_write_bytes, atomic_write_json, disk_full, fsync_folder, write_new

WEIGHT_SUFFIXES = (".safetensors", ".pth")
MANIFEST = "checkpoint.json"
TRAIN_STATE = "latest_train_state.pt"
ARCH_FIELDS = ("netG", "ngf", "norm", "input_nc", "output_nc", "no_dropout")
REQUIRED_ARCH = ("netG", "ngf", "norm", "input_nc", "output_nc")


def _reason(exc: Exception) -> str:
    """One line of why a file could not be read (torch's unpickler appends a page of advice to its errors)."""
    text = str(exc)
    if "weights_only" in text:
        return "it holds pickled Python objects beyond tensors, which fastpix does not unpickle"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _one_line(exc: Exception) -> str:
    """A load_state_dict error (one line per mismatching key) as one line."""
    return " ".join(str(exc).split())


# ---- writing files -----------------------------------------------------------------------------------------------

def weights_bytes(net_or_state, metadata: dict | None = None, fmt: str = ".safetensors") -> bytes:
    """A state_dict as safetensors, or as the reference's torch.save'd dict (.pth), on CPU."""
    state = net_or_state.state_dict() if isinstance(net_or_state, torch.nn.Module) else net_or_state
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if fmt == ".pth":
        return torch_bytes(state)
    return save(state, metadata={k: str(v) for k, v in (metadata or {}).items()})


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_weights(path: str, net_or_state, metadata: dict | None = None):
    fmt = ".pth" if path.endswith(".pth") else ".safetensors"
    atomic_write_bytes(path, weights_bytes(net_or_state, metadata, fmt))



def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix or remove it") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not a text file ({_reason(exc)})") from exc


# ---- checkpoint sets -----------------------------------------------------------------------------------------------

def write_set(run_dir: str, files: dict[str, bytes], info: dict):
    """Write files (name -> contents) as one checkpoint set with manifest info (iteration, epoch); see the module
    docstring for the order. A full disk is found before anything is written where the free space tells it."""
    needed = sum(len(b) for b in files.values())
    note = f"; the previous checkpoint ({MANIFEST}) is intact"
    if shutil.disk_usage(run_dir).free < needed:
        raise disk_full(os.path.join(run_dir, next(iter(files))), needed, note)
    entries = {}
    try:
        for name, data in files.items():
            tmp = f"{TMP_PREFIX}{info['iteration']}-{name}"
            with contextlib.suppress(FileNotFoundError):  # left by an earlier save of this iteration, killed
                os.remove(os.path.join(run_dir, tmp))
            write_new(os.path.join(run_dir, tmp), data, needed, note)
            entries[name] = {"tmp": tmp, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_json(os.path.join(run_dir, MANIFEST), {**info, "files": entries})
    except BaseException:
        if _committed(run_dir, entries):  # interrupted just after the commit: the new set stands
            _finish_renames(run_dir, entries)
        else:
            for entry in entries.values():
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(run_dir, entry["tmp"]))
        raise
    _finish_renames(run_dir, entries)


def _committed(run_dir: str, entries: dict) -> bool:
    try:
        return (read_manifest(run_dir) or {}).get("files") == entries
    except CheckpointError:
        return False


def _finish_renames(run_dir: str, entries: dict):
    for name, entry in entries.items():
        tmp = os.path.join(run_dir, entry["tmp"])
        if os.path.exists(tmp):
            os.replace(tmp, os.path.join(run_dir, name))
    fsync_folder(run_dir)  # the renames themselves durable


def read_manifest(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = load_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "iteration" not in manifest:
        raise CheckpointError(f"{path}: not a fastpix checkpoint manifest")
    return manifest


def pending_files(run_dir: str) -> dict:
    """name -> manifest entry of the newest committed save's files still under their temporary names (a save killed
    between its commit and its renames; the first save of a run leaves then no file under the names themselves)."""
    try:
        files = (read_manifest(run_dir) or {}).get("files", {})
    except (CheckpointError, OSError):  # a damaged manifest is a resume's problem (load), not a reader's
        return {}
    pending = {}
    for name, entry in files.items():
        tmp = entry.get("tmp") if isinstance(entry, dict) else None
        if (isinstance(tmp, str) and tmp.startswith(TMP_PREFIX) and os.path.basename(tmp) == tmp
                and os.path.isfile(os.path.join(run_dir, tmp))):
            pending[name] = entry
    return pending


def committed_bytes(path: str) -> bytes | None:
    """The contents of `path` as the newest committed save left them, when that save was killed between its commit
    and the rename of this file: read from the temporary its manifest names, and only if that temporary is whole
    (its sha256 is the manifest's; a later save of the same iteration may be rewriting it). None otherwise: the file
    under its own name is the committed one."""
    run_dir, name = os.path.split(os.path.abspath(path))
    entry = pending_files(run_dir).get(name)
    if entry is None:
        return None
    try:
        with open(os.path.join(run_dir, entry["tmp"]), "rb") as f:  # one read: a rename meanwhile leaves it whole
            data = f.read()
    except OSError:  # renamed (the file under its name is then this one) or removed by a train's recover
        return None
    return data if hashlib.sha256(data).hexdigest() == entry.get("sha256") else None


def recover(run_dir: str):
    """Finish the renames of a save killed after its commit, then remove every other temporary (of saves killed
    before their commit, or of any atomic write). Only the process holding the run's lock may call this."""
    manifest = read_manifest(run_dir)
    if manifest is not None:
        _finish_renames(run_dir, manifest["files"])
    for name in os.listdir(run_dir):
        if name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(run_dir, name))


def verify_set(run_dir: str, manifest: dict):
    """Each file of the manifest exists with its recorded size and sha256: the set is whole and unchanged."""
    for name, entry in manifest["files"].items():
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing, but {MANIFEST} lists it in the checkpoint of iteration "
                                  f"{manifest['iteration']}")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path}: its contents differ from the checkpoint of iteration "
                                  f"{manifest['iteration']} that {MANIFEST} records (changed or damaged since)")


# ---- the run folder --------------------------------------------------------------------------------------------------

class RunFolder:
    """The files of one training run: <checkpoints_dir>/<name>/."""

    def __init__(self, checkpoints_dir, name):
        self.dir = os.path.join(checkpoints_dir, name)

    def path(self, filename):
        return os.path.join(self.dir, filename)

    def has_checkpoint(self):
        return os.path.isfile(self.path(TRAIN_STATE))

    def weights(self, tag: str) -> dict:
        return weights_in(self.dir, tag)

    def has_log(self):
        return os.path.isfile(self.path("metrics.jsonl"))

    def log(self, record: dict):
        with open(self.path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, iteration: int):
        """Keep metrics.jsonl's records up to `iteration` (a resumed run logs the later ones again), dropping a
        line torn by a kill."""
        path = self.path("metrics.jsonl")
        if not os.path.isfile(path):
            return
        kept = []
        with open(path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("iter", 0) <= iteration:
                        kept.append(line.rstrip(b"\n") + b"\n")
        atomic_write_bytes(path, b"".join(kept))

    def save(self, G, D, train_state: dict, tags=()):
        """latest (and each tag: an epoch, iter_<N>) weights of G and D with the train state, as one set."""
        meta = {k: train_state[k] for k in ("iteration", "epoch", "position")}
        g, d = weights_bytes(G, meta), weights_bytes(D, meta)
        files = {}
        for tag in ("latest", *tags):
            files[f"{tag}_net_G.safetensors"], files[f"{tag}_net_D.safetensors"] = g, d
        files[TRAIN_STATE] = torch_bytes(train_state)
        write_set(self.dir, files, meta)

    def load(self) -> tuple[dict, dict, dict]:
        """(G state, D state, train state) of the newest complete save, verified. Call `recover` first (in the one
        process that writes the folder: the others of a distributed run only read it)."""
        manifest = read_manifest(self.dir)
        state = load_train_state(self.path(TRAIN_STATE))
        nets = {}
        for net in ("G", "D"):
            path = self.path(f"latest_net_{net}.safetensors")
            nets[net] = load_weights(path)
            saved_at = weights_metadata(path).get("iteration")
            if saved_at is not None and int(saved_at) != state["iteration"]:
                raise CheckpointError(f"{path} is from iteration {saved_at} but the train state is from "
                                      f"{state['iteration']}: the last save was interrupted")
        if manifest is not None:
            verify_set(self.dir, manifest)
        return nets["G"], nets["D"], state

    @contextlib.contextmanager
    def locked(self):
        """Refuse a second process on this folder. flock is released by the kernel when its holder exits, however
        it exits, so a lock left by a killed run never blocks the next."""
        import fcntl

        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                raise CheckpointError(f"{self.dir} is in use by another fastpix train (pid {holder}): wait for it "
                                      "to finish, or give another --name") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield self
        finally:
            os.close(fd)  # releases the flock


def saved_config(run_dir: str) -> dict:
    """The model and data sections of a run's config.json; {} for a reference checkpoints folder."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    saved = load_json(path)
    sections = [saved.get(k, {}) for k in ("data", "model")] if isinstance(saved, dict) else None
    if sections is None or not all(isinstance(s, dict) for s in sections):
        raise CheckpointError(f"{path}: not a fastpix run configuration (expected model and data sections)")
    return {**sections[0], **sections[1]}


def run_source(checkpoint: str | None, checkpoints_dir: str, name: str | None) -> str:
    """A run folder or weights file from --checkpoint, else <checkpoints_dir>/<name>."""
    if checkpoint:
        return checkpoint
    if name:
        return os.path.join(checkpoints_dir, name)
    raise CheckpointError("give --name (a run under --checkpoints-dir) or --checkpoint")


# ---- reading weights -----------------------------------------------------------------------------------------------

def load_weights(path: str) -> dict:
    """A state_dict; from a run folder, the newest committed one (committed_bytes)."""
    data = committed_bytes(path)
    if data is None and not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.endswith(".pth"):
            state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{path}: not a state_dict of tensors")
            # Reference checkpoints saved from DataParallel carry "module."; its loader strips it too.
            return {k.removeprefix("module."): v for k, v in state.items()}
        return load_file(path) if data is None else load(data)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which
        raise CheckpointError(f"{path}: cannot read checkpoint ({_reason(exc)})") from exc


def weights_metadata(path: str) -> dict:
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read checkpoint ({_reason(exc)})") from exc


def weights_in(run_dir: str, tag: str) -> dict:
    """{'G': path, 'D': path} of the <tag>_net_* files present (.safetensors preferred over .pth)."""
    found = {}
    pending = pending_files(run_dir)
    for net in ("G", "D"):
        for suffix in WEIGHT_SUFFIXES:
            name = f"{tag}_net_{net}{suffix}"
            if name in pending or os.path.isfile(os.path.join(run_dir, name)):
                found[net] = os.path.join(run_dir, name)
                break
    return found


def find_weights(run_dir: str, epoch: str, net: str) -> str:
    """<epoch>_net_<net>.safetensors, else the reference's .pth of the same name."""
    found = weights_in(run_dir, epoch).get(net)
    if found is None:
        raise CheckpointError(f"{run_dir}: no {epoch}_net_{net}.safetensors or {epoch}_net_{net}.pth "
                              "(is --name / --checkpoints_dir / --epoch right?)")
    return found


def load_into(net: torch.nn.Module, path: str, state: dict | None = None):
    """Strict load, with an error that names the file and the mismatching keys."""
    state = load_weights(path) if state is None else state
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this network (check --netG/--netD/--ngf/--ndf/--norm "
                              f"or config.json): {_one_line(exc)}") from exc


def load_torchscript(path: str, flag: str, what: str, device: torch.device) -> torch.nn.Module:
    """A network the user supplies as TorchScript (a feature network, a segmenter), in eval mode; never downloaded."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag} {path}: no such file")
    try:
        net = torch.jit.load(path, map_location=device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say which
        raise CheckpointError(f"{flag} {path}: not a TorchScript {what} ({exc})") from exc
    return net.eval()


def load_train_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no train state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read train state ({_reason(exc)})") from exc
    missing = [k for k in ("epoch", "position", "iteration", "optimizers", "torch_rng")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fastpix train state (no {', '.join(missing)})")
    return state


def find_generator_weights(checkpoint, checkpoints_dir, name, epoch="latest") -> tuple[str, str]:
    """(run folder, generator weights file). `checkpoint` (--checkpoint) is a run folder or a weights file;
    without it the run is <checkpoints_dir>/<name> and the file <epoch>_net_G.{safetensors,pth} in it."""
    if checkpoint is None:
        run_dir = os.path.join(checkpoints_dir, name)
        return run_dir, find_weights(run_dir, epoch, "G")
    if os.path.isdir(checkpoint):
        return checkpoint, find_weights(checkpoint, epoch, "G")
    if os.path.isfile(checkpoint):
        return os.path.dirname(os.path.abspath(checkpoint)), checkpoint
    raise CheckpointError(f"--checkpoint {checkpoint}: no such run folder or generator weights file")


# ---- the generator of a checkpoint -------------------------------------------------------------------------------

def _unet_depth(state: dict) -> int:
    """num_downs: the deepest block, following 'model.model.1.model.' then 'model.3.model.' down the keys."""
    depth = 1
    for key in state:
        parts = key.split(".")[2:]
        level, i = 1, 0
        while i + 1 < len(parts) and parts[i] == ("1" if level == 1 else "3") and parts[i + 1] == "model":
            level, i = level + 1, i + 2
        depth = max(depth, level)
    return depth


def infer_architecture(state: dict) -> dict:
    """What the keys and shapes of a generator state_dict tell: netG, ngf, norm, input_nc, output_nc (those found),
    and no_dropout for a ResNet (a U-Net's Dropout leaves no trace in its keys)."""
    found = {}
    first = state.get("model.model.0.weight")
    resnet_first = state.get("model.1.weight")
    if first is not None and first.dim() == 4:
        found.update(ngf=first.shape[0], input_nc=first.shape[1], netG=f"unet_{2 ** _unet_depth(state)}")
        if "model.model.3.weight" in state:
            found["output_nc"] = state["model.model.3.weight"].shape[1]  # ConvTranspose2d: [in, out, k, k]
        first_bias = "model.model.0.bias"
    elif (resnet_first is not None and resnet_first.dim() == 4 and tuple(resnet_first.shape[-2:]) == (7, 7)
          and any(".conv_block." in k for k in state)):
        found.update(ngf=resnet_first.shape[0], input_nc=resnet_first.shape[1])
        n_blocks = len({k.split(".")[1] for k in state if ".conv_block." in k})
        if n_blocks in (6, 9):
            found["netG"] = f"resnet_{n_blocks}blocks"
        # A block's Dropout (no weights) shifts its second conv from index 5 to 6: here dropout does show.
        found["no_dropout"] = not any(k.endswith(".conv_block.6.weight") and state[k].dim() == 4 for k in state)
        top_convs = [k for k in state if k.count(".") == 2 and k.endswith(".weight") and state[k].dim() == 4]
        found["output_nc"] = state[max(top_convs, key=lambda k: int(k.split(".")[1]))].shape[0]
        first_bias = "model.1.bias"
    else:
        return found
    # The reference gives convs a bias only under InstanceNorm (conv_has_bias), and BatchNorm brings running stats.
    if any(k.endswith("running_mean") for k in state):
        found["norm"] = "batch"
    else:
        found["norm"] = "instance" if first_bias in state else "none"
    return found


def locate(path_or_dir, epoch: str):
    """(weights file, the run's config.json model section or None)."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        weights, run_dir = find_weights(path, epoch, "G"), path
    elif os.path.isfile(path):
        weights, run_dir = path, os.path.dirname(os.path.abspath(path))
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    config_path = os.path.join(run_dir, "config.json")
    config = load_json(config_path).get("model") if os.path.isfile(config_path) else None
    return weights, config if isinstance(config, dict) else None


def resolve_architecture(state: dict, config: dict | None, given: dict, source: str) -> dict:
    """config.json's model section (or what the keys tell), overridden by the keyword arguments."""
    unknown = sorted(set(given) - set(ARCH_FIELDS))
    if unknown:
        raise TypeError(f"unknown architecture arguments {unknown}; accepted: {', '.join(ARCH_FIELDS)}")
    values = {"no_dropout": False}  # the reference's pix2pix default; Dropout has no weights to tell
    values.update({k: v for k, v in (config or infer_architecture(state)).items() if k in ARCH_FIELDS})
    values.update({k: v for k, v in given.items() if v is not None})
    missing = [k for k in REQUIRED_ARCH if values.get(k) is None]
    if missing:
        raise CheckpointError(f"{source}: cannot infer {', '.join(missing)} from the checkpoint's keys and shapes; "
                              f"pass {', '.join(f'{k}=...' for k in missing)} (e.g. netG='unet_256', ngf=64, "
                              "norm='batch', input_nc=3, output_nc=3)")
    return values


def load_generator(path_or_dir, epoch: str = "latest", backend=None, **arch) -> torch.nn.Module:
    """The generator of a run folder (config.json + <epoch>_net_G.*) or a weights file (.safetensors / reference
    .pth). Architecture: the run's config.json, else inferred from the keys and shapes; keyword arguments (netG,
    ngf, norm, input_nc, output_nc, no_dropout) override both."""
    from fastpix.models import define_G

    weights, config = locate(path_or_dir, epoch)
    state = load_weights(weights)
    a = resolve_architecture(state, config, arch, weights)
    G = define_G(a["input_nc"], a["output_nc"], a["ngf"], a["netG"], a["norm"], not a["no_dropout"],
                 backend=backend)
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit netG={a['netG']} ngf={a['ngf']} norm={a['norm']} "
                              f"input_nc={a['input_nc']} output_nc={a['output_nc']}: {_one_line(exc)}") from exc
    return G
