"""Which pickle globals may be imported, called or constructed.

Allow-list first: a global passes only if it is a known-safe constructor of tensors, arrays,
containers or plain values *for the way it is used* (a class that may be instantiated through NEWOBJ
is not thereby allowed to be called through REDUCE). Everything else is a finding. The deny-list
does not decide what passes, it only grades how bad an unknown global is, so a deny-list gap (the
recurring bypass class of other scanners) can lower a severity but never hide a global.

Order of decisions for one global:

1. training-sabotage primitives (RNG seeding, sleeps, kills, global setting changes) -> TG-SAB-*
2. exact allow-list entries for the use                                            -> pass
3. code-execution deny-list (exact names, modules and their submodules)            -> TG-PKL-001
4. allow-list patterns (framework classes, user [scan.allow] globals)              -> pass
5. anything else: TG-PKL-002 (called), -003 (constructed), -004 (imported only)

Names are normalised the way the loader resolves them: Python 2 names through
``_compat_pickle`` (``__builtin__`` -> ``builtins``), ``posix``/``nt`` -> ``os``, and dotted
names (protocol 4 ``getattr`` chains such as ``torch`` + ``serialization.os.system``) are judged by
every dotted prefix, so ``torch.serialization.os.system`` is as dangerous as ``os.system``.
"""

from __future__ import annotations

import _compat_pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass

from trainguard.core.findings import Severity

CALL, CONSTRUCT, IMPORT, BUILD = "call", "construct", "import", "build"

_STORAGES = [
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32", "QUInt4x2", "QUInt2x4",
    "Untyped", "Float8_e4m3fn", "Float8_e5m2",
]
_DTYPES = [
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32",
    "complex64",
    "complex128", "cfloat", "cdouble", "uint8", "int8", "int16", "short", "int32", "int", "int64",
    "long", "bool", "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64",
    "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams",
    "per_tensor_symmetric", "per_channel_symmetric", "contiguous_format", "channels_last",
    "channels_last_3d", "preserve_format", "strided", "sparse_coo", "sparse_csr", "sparse_csc",
    "sparse_bsr", "sparse_bsc", "_mkldnn",
]

# Globals safe to call with any arguments (tensor/array rebuilders, containers, plain values).
SAFE_CALLABLES = frozenset(
    [
        "collections.OrderedDict", "collections.defaultdict", "collections.Counter",
        "collections.deque", "builtins.set", "builtins.frozenset", "builtins.dict", "builtins.list",
        "builtins.tuple", "builtins.bytearray", "builtins.bytes", "builtins.complex",
        "builtins.slice", "builtins.range", "builtins.int", "builtins.float", "builtins.str",
        "builtins.bool", "builtins.object", "copyreg._reconstructor", "_codecs.encode",
        "codecs.encode",
        "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage", "torch._utils._rebuild_wrapper_subclass",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor", "torch._utils._rebuild_xla_tensor",
        "torch._utils._rebuild_mtia_tensor", "torch._utils._rebuild_typed_storage",
        "torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type",
        "torch.Size", "torch.device", "torch.serialization._get_layout",
        "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer",
        "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
        "torch.storage._load_from_bytes",  # its bytes are scanned as a nested file
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
        "numpy.ndarray", "numpy.dtype", "numpy.ma.core._mareconstruct",
        "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        # Cython unpickler: SeedSequence.__new__(cls) (a TypeError for any other cls), then state
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
        "argparse.Namespace", "types.SimpleNamespace", "datetime.datetime", "datetime.date",
        "datetime.time", "datetime.timedelta", "datetime.timezone", "decimal.Decimal",
        "fractions.Fraction", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
        "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "uuid.UUID",
        "joblib.numpy_pickle.NumpyArrayWrapper", "collections.abc.Mapping",
        # Lightning and Hugging Face checkpoint metadata
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        "transformers.trainer_utils.IntervalStrategy", "transformers.trainer_utils.SaveStrategy",
        "transformers.trainer_utils.SchedulerType", "transformers.trainer_utils.HubStrategy",
        "transformers.trainer_utils.FSDPOption", "transformers.training_args.OptimizerNames",
        "transformers.debug_utils.DebugOption", "transformers.utils.generic.PaddingStrategy",
        "transformers.utils.generic.ExplicitEnum", "accelerate.utils.dataclasses.DistributedType",
    ]
    + [f"torch.{s}Storage" for s in _STORAGES]
    + [f"torch.cuda.{s}Storage" for s in _STORAGES]
)

# Safe to import (reference) but not to call: dtypes, layouts, activation functions kept as
# module attributes in full-model saves.
SAFE_REFERENCES = frozenset(
    [f"torch.{d}" for d in _DTYPES]
    # legacy tensor type objects (torch.FloatTensor...), recorded by old checkpoints' metadata
    + [f"torch.{s}Tensor" for s in _STORAGES if s != "Untyped"]
    + ["torch.Tensor", "torch._tensor.Tensor", "builtins.NotImplemented", "builtins.Ellipsis",
       "builtins.None", "builtins.True", "builtins.False"]
    # numpy bit generators and SeedSequence, passed as classes to numpy.random._pickle's ctors
    + ["numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64",
       "numpy.random._pcg64.PCG64DXSM", "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
       "numpy.random.bit_generator.SeedSequence"]
)

# Classes safe to rebuild the way pickle rebuilds plain objects (NEWOBJ or copyreg._reconstructor,
# then BUILD fills __dict__: none of their code runs) but not to call through REDUCE, which would
# run __init__/__post_init__ (TrainingArguments reads deepspeed/accelerator JSON files and sets up
# devices; PartialState initialises torch.distributed).
SAFE_CLASSES = frozenset(
    [
        "transformers.training_args.TrainingArguments",
        "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
        "transformers.trainer_pt_utils.AcceleratorConfig",
        "accelerate.state.PartialState",
    ]
)

# Patterns of framework classes: (regex on the full name, allowed uses).
_CLASS = r"[A-Z][A-Za-z0-9_]*"
SAFE_PATTERNS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    (re.compile(rf"^torch\.nn\.modules\.[a-z_.]+\.{_CLASS}$"), frozenset({IMPORT, CONSTRUCT})),
    (re.compile(r"^torch\.nn\.functional\.[a-z_0-9]+$"), frozenset({IMPORT})),
    (re.compile(r"^torch\._C\._nn\.[a-z_0-9]+$"), frozenset({IMPORT})),
    (re.compile(rf"^torch\.ao\.nn\.[a-z_.]+\.{_CLASS}$"), frozenset({IMPORT, CONSTRUCT})),
    (re.compile(rf"^torch\.nn\.utils\.parametrize\.{_CLASS}$"), frozenset({IMPORT, CONSTRUCT})),
    (re.compile(rf"^numpy\.dtypes\.{_CLASS}$"), frozenset({IMPORT, CONSTRUCT, CALL})),
    (re.compile(r"^numpy\.(float|int|uint|complex|bool_|str_|bytes_|object_)[0-9_]*$"),
     frozenset({IMPORT})),
    # scikit-learn estimators and their Cython helpers (sklearn.tree._tree.Tree is rebuilt by
    # REDUCE); test utilities are excluded because some of them run subprocesses.
    (re.compile(rf"^sklearn\.(?!utils\._testing)(?!.*\.tests?\.)[a-z_0-9.]+\.{_CLASS}$"),
     frozenset({IMPORT, CONSTRUCT, CALL})),
    (re.compile(r"^sklearn\.[a-z_0-9.]+\.__pyx_unpickle_[A-Za-z0-9_]+$"),
     frozenset({IMPORT, CALL})),
    (re.compile(rf"^scipy\.sparse\.[a-z_0-9.]+\.{_CLASS}$"), frozenset({IMPORT, CONSTRUCT})),
    # scipy.sparse's own (lower-case) matrix and array classes, e.g. scipy.sparse._csr.csr_matrix
    (re.compile(r"^scipy\.sparse\._(bsr|coo|csc|csr|dia|dok|lil)\.\1_(matrix|array)$"),
     frozenset({IMPORT, CONSTRUCT})),
)

# TorchScript archives are read by torch.jit's C++ unpickler, which resolves these inside the
# archive's own compilation unit, never through Python imports.
TORCHSCRIPT_PATTERNS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    (re.compile(r"^__torch__(\.[A-Za-z0-9_]+)+$"), frozenset({IMPORT, CONSTRUCT, CALL, BUILD})),
    (re.compile(r"^torch\.jit\._pickle\.[a-z_]+$"), frozenset({IMPORT, CALL})),
)

# ---------------------------------------------------------------------------- deny-list
# Modules (and everything under them) whose globals execute code, touch processes, files or the
# network, or load further pickles. Sources: picklescan/modelscan/fickling/modelaudit advisories
# and FIELD-NOTES.md's bypass classes.
DANGEROUS_MODULES = frozenset(
    """os posix nt posixpath ntpath subprocess _posixsubprocess _winapi sys runpy code codeop pty
    tty shutil socket _socket ssl select selectors ctypes _ctypes cffi marshal pickle _pickle
    cPickle pickletools dill cloudpickle shelve dbm sqlite3 importlib imp pkgutil zipimport pip
    ensurepip venv site sysconfig distutils setuptools pkg_resources _xxsubinterpreters
    _interpreters _xxinterpchannels concurrent multiprocessing asyncio threading _thread
    webbrowser http urllib urllib3 requests httpx aiohttp ftplib smtplib telnetlib poplib imaplib
    nntplib xmlrpc socketserver profile cProfile _lsprof trace bdb pdb timeit doctest pydoc
    tempfile glob fnmatch tarfile zipfile gzip bz2 lzma _osx_support _aix_support mailcap
    logging.config code types inspect gc weakref ctypes.util _io io builtins.open
    operator.attrgetter
    operator.methodcaller functools.partial functools.reduce torch.hub torch.load torch.jit.load
    torch.utils.collect_env torch.utils.cpp_extension torch.utils.data.datapipes torch._inductor
    torch._dynamo torch.fx torch.package torch.distributed.rpc torch.serialization.load
    torch.ops torch.classes torch._ops torch.library torch.testing torch.utils.benchmark
    torch._C._jit torch.jit numpy.f2py numpy.testing numpy.distutils numpy.ctypeslib numpy.load
    numpy.lib.npyio numpy.lib.format numpy.fromfile numpy.memmap numpy.lib.utils joblib.load
    joblib.numpy_pickle.load joblib.numpy_pickle.NDArrayWrapper joblib.parallel keras.models
    tensorflow jax transformers.dynamic_module_utils huggingface_hub subprocess32 sh plumbum
    paramiko fabric invoke pexpect
    _operator.attrgetter _operator.methodcaller _operator.itemgetter operator.itemgetter
    _functools.partial _functools.reduce idlelib lib2to3 _pyrepl torch.utils.bottleneck
    torch.utils._config_module logging.handlers logging.FileHandler mmap py_compile compileall
    commands urllib2 httplib fileinput linecache resource _sqlite3 test.support _posixshmem
    copyreg.add_extension copyreg.remove_extension copyreg.pickle copyreg.dispatch_table
    pdb_clone IPython""".split()
)

# Exact dangerous globals in otherwise harmless modules.
DANGEROUS_NAMES = frozenset(
    """builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.open
    builtins.getattr builtins.setattr builtins.delattr builtins.globals builtins.locals
    builtins.vars builtins.breakpoint builtins.input builtins.help builtins.memoryview
    builtins.__build_class__ builtins.__loader__ builtins.type builtins.classmethod
    builtins.staticmethod builtins.property builtins.super builtins.print builtins.exit
    builtins.quit builtins.copyright builtins.license builtins.credits
    uuid._get_command_stdout uuid._popen uuid._ifconfig_getnode uuid._ip_getnode
    uuid._arp_getnode uuid._lanscan_getnode uuid._netstat_getnode uuid._find_mac
    uuid._find_mac_near_keyword uuid._find_mac_under_heading uuid._unix_getnode
    numpy.lib._utils_impl._info copyreg._extension_registry
    _codecs.lookup codecs.open codecs.lookup re.compile re._compile
    torch.storage._load_from_file torch.serialization._load""".split()
)
# Final names that are dangerous wherever they hang (judged on dotted names from getattr chains).
DANGEROUS_LEAVES = frozenset(
    """system popen popen2 popen3 popen4 spawn spawnl spawnle spawnlp spawnv spawnve spawnvp
    execl execle execlp execlpe execv execve execvp execvpe fork forkpty posix_spawn
    posix_spawnp run call check_call check_output getoutput getstatusoutput Popen eval exec
    compile __import__ import_module load_module exec_module run_module run_path run_string
    run_code interact system_profile loads load_library dlopen LoadLibrary CDLL PyDLL
    cdll pydll __reduce__ __reduce_ex__ __globals__ __builtins__ __subclasses__ __code__
    __getattribute__ __setattr__ __class__ __bases__ __mro__ __init_subclass__ __dict__
    write_text write_bytes unlink rmtree symlink_to hardlink_to touch""".split()
)

# ---------------------------------------------------------------------------- sabotage
_SAB_RNG = frozenset(
    """torch.manual_seed torch.seed torch.set_rng_state torch.random.manual_seed torch.random.seed
    torch.random.set_rng_state torch.random.fork_rng torch.cuda.manual_seed
    torch.cuda.manual_seed_all torch.cuda.seed torch.cuda.seed_all torch.cuda.set_rng_state
    torch.cuda.set_rng_state_all torch.cuda.random.manual_seed torch.cuda.random.manual_seed_all
    torch.cuda.random.set_rng_state torch.cuda.random.set_rng_state_all torch.mps.manual_seed
    torch.xpu.manual_seed torch.xpu.manual_seed_all torch.Generator.manual_seed
    torch.Generator.set_state torch._C.Generator.manual_seed torch._C.Generator.set_state
    torch._C._set_rng_state torch.default_generator torch._C.default_generator
    torch.cuda.default_generators numpy.random._rand
    random.seed random.setstate random.Random.seed random.Random.setstate random._inst
    numpy.random.seed numpy.random.set_state numpy.random.mtrand.seed numpy.random.mtrand.set_state
    numpy.random.mtrand._rand numpy.random.RandomState.seed numpy.random.mtrand.RandomState.seed
    numpy.random.RandomState.set_state numpy.random.mtrand.RandomState.set_state
    transformers.set_seed transformers.trainer_utils.set_seed transformers.enable_full_determinism
    transformers.trainer_utils.enable_full_determinism lightning.seed_everything
    lightning.pytorch.seed_everything pytorch_lightning.seed_everything
    lightning_fabric.seed_everything lightning_fabric.utilities.seed.seed_everything
    lightning.fabric.utilities.seed.seed_everything pytorch_lightning.utilities.seed.seed_everything
    accelerate.utils.set_seed accelerate.utils.random.set_seed tensorflow.random.set_seed
    keras.utils.set_random_seed""".split()
)
_SAB_DELAY = frozenset(
    """time.sleep asyncio.sleep asyncio.tasks.sleep threading.Event.wait threading.Timer
    threading.Condition.wait threading.Barrier select.select signal.pause torch.cuda._sleep
    torch.cuda.synchronize torch._C._cuda_sleep os.wait os.waitpid builtins.input""".split()
)
_SAB_KILL_NAMES = frozenset(
    """os.kill os.killpg os.abort os._exit sys.exit builtins.exit builtins.quit
    _thread.interrupt_main threading._shutdown torch.distributed.destroy_process_group
    torch.distributed.barrier torch.distributed.monitored_barrier""".split()
)
_SAB_KILL_MODULES = frozenset("signal _signal faulthandler torch.distributed".split())
_SAB_SETTINGS = frozenset(
    """torch.set_default_dtype torch.set_default_tensor_type torch.set_default_device
    torch.set_grad_enabled torch.autograd.set_grad_enabled torch.autograd.grad_mode.set_grad_enabled
    torch.set_num_threads torch.set_num_interop_threads torch.use_deterministic_algorithms
    torch.set_deterministic_debug_mode torch.set_flush_denormal torch.set_float32_matmul_precision
    torch.autograd.set_detect_anomaly torch.set_anomaly_enabled torch.set_warn_always
    torch.autograd.anomaly_mode.set_detect_anomaly torch.no_grad torch.inference_mode""".split()
)
_SAB_SETTING_MODULES = frozenset("torch.backends torch.nn.init".split())
# Tensor classes whose in-place methods (``add_``, ``zero_``...) called at load time rewrite
# weights: REDUCE on ``torch.Tensor.zero_`` with a tensor of the same checkpoint.
_TENSOR_CLASSES = frozenset(
    "torch.Tensor torch._tensor.Tensor torch._C.TensorBase torch._C._TensorBase".split()
)
# Extension-registry lookups (EXT1/2/4) are named under this prefix by the pickle machine: what
# they resolve to is unknowable, so they are graded as unknown globals, not as the registry.
_OPAQUE_NAMES = frozenset({"copyreg._extension_registry"})
# Where BUILD/setattr on an imported object is a training monkeypatch rather than a generic one.
TRAINING_CRITICAL = frozenset(
    """torch random numpy transformers lightning pytorch_lightning lightning_fabric accelerate
    deepspeed megatron apex time""".split()
)


@dataclass(frozen=True)
class Verdict:
    """The decision for one global: ``rule_id`` None means allowed."""

    rule_id: str | None
    severity: Severity
    reason: str


ALLOWED = Verdict(None, Severity.INFO, "allow-listed")


def normalize(module: str, name: str) -> str:
    """The full dotted name the loader would resolve, with Python 2 and platform aliases undone."""
    key = (module, name)
    if key in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[key]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    if module in ("posix", "nt"):
        module = "os"
    elif module in ("posixpath", "ntpath"):
        module = "os.path"
    elif module == "__builtin__":
        module = "builtins"
    return f"{module}.{name}"


def _prefixes(full: str) -> list[str]:
    parts = full.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _compile_user_pattern(pattern: str) -> re.Pattern[str]:
    """``pkg.mod.Name`` exact, ``pkg.*`` one segment, ``pkg.**`` any depth."""
    out = []
    for seg in pattern.split("."):
        if seg == "**":
            out.append(r"[A-Za-z0-9_.]+")
        elif seg == "*":
            out.append(r"[A-Za-z0-9_]+")
        else:
            out.append(re.escape(seg).replace(r"\*", "[A-Za-z0-9_]*"))
    return re.compile("^" + r"\.".join(out) + "$")


class Policy:
    """Classifies (module, name, uses) into a :class:`Verdict`."""

    def __init__(self, extra_allow: Iterable[str] = (), *, torchscript: bool = False) -> None:
        self._user = tuple(_compile_user_pattern(p) for p in extra_allow)
        self._patterns = SAFE_PATTERNS
        self._torchscript = TORCHSCRIPT_PATTERNS if torchscript else ()
        self._cache: dict[tuple[str, str, frozenset[str]], Verdict] = {}

    def with_torchscript(self) -> Policy:
        p = Policy(torchscript=True)
        p._user = self._user
        return p

    def classify(self, module: str, name: str, uses: Iterable[str]) -> Verdict:
        key = (module, name, frozenset(uses))
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self._classify(normalize(module, name), key[2],
                                                  name.count("."))
        return v

    def _classify(self, full: str, uses: frozenset[str], chain: int = 0) -> Verdict:
        """``chain``: how many attribute lookups the name does after its first (protocol 4
        dotted names such as ``serialization.os.system``)."""
        prefixes = _prefixes(full)
        parts = full.split(".")
        raw = full
        # 1. sabotage primitives
        sab = sabotage(full, prefixes)
        if sab is not None:
            return sab
        if BUILD in uses:
            # random.seed replaced through BUILD on the module, reached under any dotted name
            # (``email.utils.random`` is the stdlib random module)
            if any(seg in TRAINING_CRITICAL for seg in parts):
                return Verdict("TG-SAB-002", Severity.CRITICAL, f"sets attributes of {full}")
            return Verdict("TG-PKL-006", Severity.HIGH, f"sets attributes of {full}")
        # 2. exact allow-list (and TorchScript's own namespace inside TorchScript archives)
        for pattern, allowed_uses in self._torchscript:
            if pattern.match(full) and uses <= allowed_uses:
                return ALLOWED
        if full in SAFE_CALLABLES:
            return ALLOWED
        if full in SAFE_CLASSES and uses <= {IMPORT, CONSTRUCT}:
            return ALLOWED
        if full in SAFE_REFERENCES and uses <= {IMPORT}:
            return ALLOWED
        # 3. deny-list: exact names, then any dotted prefix, then dangerous leaf names
        if full in DANGEROUS_NAMES:
            return Verdict("TG-PKL-001", Severity.CRITICAL, f"{full} is a code-execution primitive")
        for p in prefixes:
            if p in DANGEROUS_MODULES or (p in DANGEROUS_NAMES and p not in _OPAQUE_NAMES):
                return Verdict("TG-PKL-001", Severity.CRITICAL, f"{raw} is in {p}")
        # A dotted name walks attributes, and modules keep the modules they import as attributes:
        # 'torch' + 'serialization.os.remove' is os.remove. Judge every module met on the way.
        # The looked-up name itself counts too: 'torch.nn.functional' + 'os' hands out os.
        first_attr = len(parts) - chain - 1
        for i in range(first_attr, len(parts)):
            for j in range(i + 1, len(parts) + 1):
                inner = ".".join(parts[i:j])
                if inner in DANGEROUS_MODULES or inner in DANGEROUS_NAMES:
                    return Verdict("TG-PKL-001", Severity.CRITICAL,
                                   f"{raw} reaches {inner} through an attribute chain")
        leaf_hits = [seg for seg in parts[1:] if seg in DANGEROUS_LEAVES]
        if leaf_hits:
            return Verdict("TG-PKL-001", Severity.CRITICAL,
                           f"{raw} reaches {leaf_hits[-1]} through an attribute chain")
        # 4. allow patterns (framework classes, user config)
        for pattern, allowed_uses in self._patterns:
            if pattern.match(full) and uses <= allowed_uses:
                return ALLOWED
        for pattern in self._user:
            if pattern.match(full):
                return ALLOWED
        # 5. unknown
        if CALL in uses:
            return Verdict("TG-PKL-002", Severity.HIGH, f"{full} is called")
        if CONSTRUCT in uses:
            return Verdict("TG-PKL-003", Severity.MEDIUM, f"{full} is instantiated")
        return Verdict("TG-PKL-004", Severity.MEDIUM, f"{full} is imported")


def sabotage(full: str, prefixes: list[str] | None = None) -> Verdict | None:
    """The training-sabotage verdict for a global, or None."""
    prefixes = prefixes if prefixes is not None else _prefixes(full)
    if full in _SAB_RNG:
        return Verdict("TG-SAB-001", Severity.HIGH, f"{full} reseeds or sets RNG state")
    if full in _SAB_DELAY:
        return Verdict("TG-SAB-003", Severity.HIGH, f"{full} waits or sleeps")
    if full in _SAB_KILL_NAMES or any(p in _SAB_KILL_MODULES for p in prefixes):
        return Verdict("TG-SAB-004", Severity.CRITICAL, f"{full} kills, signals or exits")
    if full in _SAB_SETTINGS or (
        any(p in _SAB_SETTING_MODULES for p in prefixes[:-1])
    ):
        return Verdict("TG-SAB-005", Severity.HIGH, f"{full} changes global training settings")
    leaf = full.rsplit(".", 1)[-1]
    if prefixes[0] == "torch" and leaf.startswith("register_") and "hook" in leaf:
        # torch.optim.optimizer.register_optimizer_step_pre_hook and
        # torch.nn.modules.module.register_module_forward_hook act on every optimizer/module
        return Verdict("TG-SAB-002", Severity.CRITICAL, f"{full} installs a global hook")
    if (any(p in _TENSOR_CLASSES for p in prefixes[:-1]) and leaf.endswith("_")
            and not leaf.startswith("__")):
        return Verdict("TG-SAB-002", Severity.CRITICAL, f"{full} modifies tensors in place")
    if prefixes[0] == "torch" and (leaf.startswith(("set_", "_set_"))):
        return Verdict("TG-SAB-005", Severity.HIGH, f"{full} changes global torch state")
    return None
