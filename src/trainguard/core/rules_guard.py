"""Rules for the runtime guard (issue 5): ids TG-GRD-NNN, never reused.

Listed in the one registry (:mod:`trainguard.core.rules`), which checks ids are unique.
TG-GRD-001..049: the runtime (audit hook, load gate, tripwires, launcher; docs/guard.md);
TG-GRD-101..: the training monitors (guard/monitors.py and friends; docs/guard.md).
"""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.rules import Rule

_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

RULES: list[Rule] = [
    Rule("TG-GRD-001", "Unpickling resolved a global the scan policy does not allow", _C,
         "A file loaded inside the job imported a global that is not a known-safe constructor "
         "(the same allow-list `trainguard scan` uses). This is the moment a malicious checkpoint "
         "takes over a training process.",
         "Do not load this file; scan it with `trainguard scan`, load weights with "
         "weights_only=True or safetensors, or add your own trusted classes to [scan.allow]."),
    Rule("TG-GRD-002", "Code ran while a file was being loaded", _C,
         "A process, network connection, dynamic code, file write or native library load was "
         "started from inside torch.load / pickle.load / numpy.load / joblib.load: a pickle "
         "payload running.",
         "Treat the file as hostile; find where it came from (`trainguard investigate`)."),
    Rule("TG-GRD-003", "Dynamic code compiled or executed outside the installed packages", _H,
         "Code that is not in a file (exec/eval/compile of a string) was run by the project's "
         "code or by other dynamic code: the usual shape of an obfuscated payload.",
         "Find the code location named in the event and remove the exec/eval."),
    Rule("TG-GRD-004", "A program was started from project or dynamic code", _M,
         "subprocess, os.system, os.exec* or os.posix_spawn ran a program that is not in "
         "[guard] allow_exec. Payloads use this to persist, download or kill ranks.",
         "If the program is expected, add it to [guard] allow_exec; otherwise remove the call."),
    Rule("TG-GRD-005", "A signal was sent to another process", _H,
         "os.kill / os.killpg / signal.pthread_kill from project or dynamic code: the way one "
         "rank of a distributed job is killed or stalled from inside.",
         "Find the code location named in the event."),
    Rule("TG-GRD-006", "Network connection to a destination not allowed", _M,
         "A socket connected or bound to an address outside loopback and [guard] allow_connect: "
         "exfiltration of weights or data, or a payload fetching its second stage.",
         "Add expected services (data, metrics, hub mirrors) to [guard] allow_connect."),
    Rule("TG-GRD-007", "Write into the Python environment", _C,
         "A file in sys.prefix or site-packages was created, changed or removed while the job "
         "ran: a way to persist code that every later job imports.",
         "Rebuild the environment from a lock file; run `trainguard env verify`."),
    Rule("TG-GRD-008", "Write to a protected checkpoint path", _H,
         "The job wrote, removed or renamed a file under [guard] protected_paths (other jobs' "
         "checkpoints), outside its own [guard] output_dirs.",
         "Give each job its own output directory; investigate the code location named."),
    Rule("TG-GRD-009", "Native library loaded from project code or from outside the environment",
         _H,
         "ctypes loaded a shared library from project or dynamic code, or from a path outside "
         "the environment: native code the audit hook cannot follow.",
         "Find the code location named; install native extensions as packages instead."),
    Rule("TG-GRD-010", "A training-critical function was replaced", _C,
         "An optimizer step/zero_grad, Module.__call__, load_state_dict, DataLoader iteration, "
         "backward or a seed function no longer is the code it was after import (or its code "
         "does not come from its own package): the way updates get flipped or weights perturbed "
         "from inside a job.",
         "Find the replacing function named in the event (file:line) and remove it."),
    Rule("TG-GRD-011", "A global torch hook was registered", _H,
         "A forward/backward/optimizer hook registered for every module or optimizer can change "
         "activations, gradients or updates without touching any model code.",
         "If the hook is yours, register it on your own modules instead; otherwise find the "
         "function named in the event."),
    Rule("TG-GRD-012", "Random number generators reseeded after training started", _H,
         "A seed function ran after the first guarded step: data order, dropout and noise become "
         "predictable or diverge across ranks, and a re-run reproduces the sabotage faithfully.",
         "Seed once before training; find the code location named in the event."),
    Rule("TG-GRD-013", "A signed artifact failed verification before load", _C,
         "The file listed in [guard] signed does not match its signature (or the signature "
         "could not be checked): it was changed after signing.",
         "Do not use the file; compare it with `trainguard diff`, re-obtain it from its signer."),
    Rule("TG-GRD-014", "A function's code object was replaced in place", _C,
         "Assigning __code__ on a framework function changes its behaviour while keeping its "
         "identity, which only a code digest notices.",
         "Find the code location named in the event."),
    Rule("TG-GRD-015", "The guard could not do part of its work", _L,
         "An internal guard error was caught so that the job continues; the check it belongs "
         "to did not run from then on.",
         "Report it with the event details; the rest of the guard stays active."),
    Rule("TG-GRD-016", "A declared input failed verification before launch", _C,
         "`trainguard run --input P --signature B` could not verify P against B, or no "
         "verifier is available (fail closed).",
         "Re-obtain the input from its signer; in enforce mode the job does not start."),
    Rule("TG-GRD-017", "Pre-launch environment check found problems", _M,
         "The quick environment check before launch reported findings (changed files, startup "
         "hooks) or could not run.",
         "Run `trainguard env verify` for the details."),
    # --- training monitors (guard/monitors.py, optim.py, rng.py, crossrank.py, loss.py, ...) ---
    Rule("TG-GRD-101", "Optimizer hyperparameter differs from the committed config or schedule",
         _H,
         "A param group's learning rate, betas, eps, weight decay, momentum or another setting "
         "is not what the committed config, the declared schedule or the attached LR scheduler "
         "says: a silent change that slows, destabilises or redirects training.",
         "Compare with the config in the event; find who changed the param group (tripwire and "
         "audit events of the same step)."),
    Rule("TG-GRD-102", "Optimizer update ascends the loss", _C,
         "maximize=True, a negative learning rate, or an update that moved the sampled weights "
         "along the optimizer's own descent direction instead of against it: the update was "
         "flipped, on every step or only on some.",
         "Stop the run; look for a replaced optimizer step (TG-GRD-010) or a payload changing "
         "param groups; resume from a checkpoint before the first detection."),
    Rule("TG-GRD-103", "RNG state changed to a freshly seeded state", _H,
         "Between two steps a generator (torch, CUDA, Python, NumPy) was reseeded with a known "
         "seed: data order, dropout and noise become predictable or differ across ranks.",
         "Seed once before training; find the seed call (TG-GRD-012 names its location)."),
    Rule("TG-GRD-104", "RNG state rewound or replayed", _H,
         "A generator returned to a state seen at an earlier step, or stopped advancing after "
         "advancing every step: its stream is being replayed (a saved state restored or the "
         "same seed set each step).",
         "Find code that calls set_rng_state/setstate/seed inside the training loop."),
    Rule("TG-GRD-105", "Weights or optimizer state differ across data-parallel ranks", _C,
         "Replicas of a data-parallel job must hold identical weights and optimizer state; the "
         "random-projection fingerprints of the named rank differ: its weights were perturbed "
         "or its updates differ.",
         "Stop the run; inspect the named rank's host and code path; resume from a verified "
         "checkpoint."),
    Rule("TG-GRD-106", "Weights after load differ from the loaded file", _C,
         "The tensors in memory right after loading do not have the digests of the file that "
         "was loaded (or could not be compared): something changed them between the file and "
         "the model.",
         "Reload from the verified file; look for load_state_dict or hook tampering."),
    Rule("TG-GRD-107", "Loss is not finite", _C,
         "The loss is NaN or infinite: the next update destroys the weights.",
         "Stop and resume from the last good checkpoint; check data and learning rate."),
    Rule("TG-GRD-108", "Loss spike", _M,
         "The loss jumped far above its recent median (robust z-score and ratio both exceeded): "
         "a bad batch, an instability, or a sabotaged step.",
         "Look at the data and the update-direction and hyperparameter events of that step."),
    Rule("TG-GRD-109", "Loss turned upward after descending", _H,
         "Window medians of the loss went down and then clearly up: what a flipped or "
         "ascending update does, and what a NaN/spike check misses when only some steps are "
         "flipped.",
         "Check TG-GRD-101/102 events around the step; compare with a clean run."),
    Rule("TG-GRD-110", "Slow rank", _M,
         "A rank's own work per step is far above the others', or a step ran much longer than "
         "usual (the event carries every thread's stack and the code location): one slow rank "
         "stalls the whole job.",
         "Look at the stack in the event: a sleep or wait in project code is sabotage; an I/O "
         "or data-loading frame is a performance problem."),
    Rule("TG-GRD-111", "Hung rank", _H,
         "A step has not finished within the hang timeout; the event carries every thread's "
         "stack and the code location where the rank waits.",
         "Look at the stack in the event; kill the job and resume from a checkpoint."),
]
