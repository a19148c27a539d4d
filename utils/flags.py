"""Every command-line flag, in help groups, with the entry points that take it.

``add_flags(parser, entry)`` adds the flags of one entry point ('main',
'train_full', 'test_trans', 'demo'; None: all of them, for tools that build
configs of any entry point). The config object always has every attribute
(``utils.config`` fills the flags an entry point does not take with their
defaults), so code downstream never depends on which entry point parsed.
"""
import argparse

ATTACK_TYPES = ("fgsm", "fgsm-rs", "pgd", "free", None)
TASKS = ("search", "ft_inherit", "ft_reinit", "ft_full")
FT_FULL_MODES = ("all", "only_zero", "decay_on_zero", "low_lr_zero")
AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "on", "off")
ENTRIES = ("main", "train_full", "test_trans", "demo")
GROUPS = ("model", "data", "optimisation", "attack", "evaluation", "runs", "distributed")

# who takes a flag; demo.py passes its flags to main.py and train_full.py, so it takes those both take
ALL = frozenset(ENTRIES)
TRAIN = frozenset(("main", "train_full", "demo"))
MAIN = frozenset(("main",))
FULL = frozenset(("train_full",))
TRANS = frozenset(("test_trans",))


def _int_list(text):
    """'0,1' -> [0, 1] (the original's --multigpu format)."""
    try:
        return [int(t) for t in str(text).split(",") if t.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")


def _none_or_str(text):
    return None if text is None or str(text) in ("None", "none", "") else str(text)


def _float_list(text):
    """'0.5,0.4' or '0.5 0.4' -> [0.5, 0.4]."""
    try:
        return [float(t) for t in str(text).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got '{text}'")


def _device(text):
    """'cpu', 'cuda' or 'cuda:N'."""
    text = str(text)
    head, _, index = text.partition(":")
    if text in ("cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got '{text}'")


class _FlatList(argparse.Action):
    """``--mean 0.49 0.48 0.45`` and ``--mean 0.49,0.48,0.45`` both give [0.49, 0.48, 0.45]."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for part in values for v in part])


def _data(a):
    a(ALL, "--data", default="datasets", help="dataset root folder")
    a(ALL, "--set", default="Digits", help="dataset name (see data registry); Digits needs no download")
    a(ALL, "--download", action="store_true", help="allow torchvision to download a missing dataset")
    a(ALL, "--image_size", type=int, default=32, help="ImageFolder and Digits: side length in pixels (Digits: 8 is native)")
    a(ALL, "--mean", type=_float_list, nargs="+", action=_FlatList, default=None,
      help="ImageFolder: per-channel mean, e.g. 0.5,0.5,0.5 or 0.5 0.5 0.5")
    a(ALL, "--std", type=_float_list, nargs="+", action=_FlatList, default=None,
      help="ImageFolder: per-channel std (commas or spaces)")
    a(ALL, "-j", "--workers", type=int, default=20, help="data loader worker processes")
    a(TRAIN, "--low-data", dest="low_data", type=float, default=1.0, help="fraction of training data used")
    a(TRAIN, "--one-batch", dest="one_batch", action="store_true", help="use a single batch per epoch (debug)")
    a(TRAIN, "--val_split", type=float, default=None,
      help="hold out this fraction of the TRAINING set (seeded, stratified) and pick the best epoch "
           "on it; default: off, the best epoch is picked on the test split as in the paper")


def _model(a):
    a(ALL, "-a", "--arch", default="cResNet18", help="model architecture (see models registry)")
    a(ALL, "--prune-rate", dest="prune_rate", type=float, default=0.0,
      help="k: fraction of weights KEPT in each masked layer, in (0, 1]; required unless a preset or "
           "(-e, test_trans.py) the checkpoint gives it; train_full.py keeps every weight (k = 1), as the original")
    a(ALL, "--width-mult", dest="width_mult", type=float, default=1.0, help="scale every layer's width (> 0)")
    a(ALL, "--num-classes", dest="num_classes", type=int, default=None,
      help="number of classes (default: from the dataset)")
    a(ALL, "--conv_type", default=None, help="masked/dense layer type (default SubnetConv)")
    a(ALL, "--bn-type", dest="bn_type", default=None, help="BatchNorm type (default NonAffineBatchNorm)")
    a(ALL, "--first-layer-type", dest="first_layer_type", default=None, help="layer type of the first conv")
    a(ALL, "--first-layer-dense", dest="first_layer_dense", action="store_true", help="first layer dense")
    a(ALL, "--last-layer-dense", dest="last_layer_dense", action="store_true", help="classifier dense")
    a(TRAIN, "--freeze-weights", dest="freeze_weights", action="store_true", help="do not train weights")
    a(ALL, "--init", default="kaiming_normal", help="weight init (see registry)")
    a(ALL, "--mode", default="fan_in", help="fan used by the init: fan_in or fan_out")
    a(ALL, "--nonlinearity", default="relu", help="gain of the init")
    a(ALL, "--scale-fan", dest="scale_fan", action="store_true",
      help="as the original: signed/unsigned_constant and kaiming_normal use fan*(1-k), every layer")
    a(ALL, "--scale-fan-kept", dest="scale_fan_kept", action="store_true",
      help="correction (opt-in): fan*k, the kept connections, in masked layers, every fan-based init")
    a(ALL, "--mbv2-stride-fix", dest="mbv2_stride_fix", action="store_true",
      help="MobileNetV2 downsamples as designed (num_classes logits); the original's depthwise "
           "convs ignore their stride (8x8x num_classes logits at 32x32)")
    a(MAIN, "--score-init-constant", dest="score_init_constant", type=float, default=None,
      help="SampleSubnetConv: initial value of every score")
    a(MAIN, "--random-subnet", dest="random_subnet", action="store_true", help="random mask, no search")


def _optimisation(a):
    a(TRAIN, "--optimizer", default="sgd", help="sgd or adam")
    a(TRAIN, "--epochs", type=int, default=160, help="number of epochs (>= 1)")
    a(TRAIN, "--start-epoch", dest="start_epoch", type=int, default=None, help="manual epoch to start at")
    a(ALL, "-b", "--batch_size", type=int, default=256, help="global batch size (all GPUs/ranks)")
    a(ALL, "--test_batch_size", type=int, default=None, help="evaluation batch size (default batch_size//2)")
    a(TRAIN, "--lr", "--learning-rate", dest="lr", type=float, default=0.1, help="initial learning rate")
    a(TRAIN, "--warmup_length", type=int, default=0, help="linear warm-up epochs")
    a(TRAIN, "--momentum", type=float, default=0.9, help="SGD momentum")
    a(TRAIN, "--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    a(TRAIN, "--nesterov", action="store_true", help="Nesterov momentum")
    a(TRAIN, "--no-bn-decay", dest="no_bn_decay", action="store_true", help="no weight decay on BatchNorm")
    a(TRAIN, "--label-smoothing", dest="label_smoothing", type=float, default=None, help="label smoothing")
    a(TRAIN, "--lr_policy", default="cifar_piecewise", help="learning-rate schedule (see registry)")
    a(TRAIN, "--multistep_lr_adjust", type=int, default=30, help="epochs between decays (imagenet policies)")
    a(TRAIN, "--multistep_lr_gamma", type=float, default=0.1, help="decay factor (imagenet policies)")
    a(TRAIN, "--multistep", type=int, nargs="*", default=None,
      help="multistep_lr milestones in epochs: x0.1 at the first, x0.01 at the second")
    a(TRAIN, "--trainer", default="default", help="training loop: default, lottery or ss")
    a(MAIN, "--lottery_epochs", type=int, default=6, help="--trainer lottery: dense epochs before the search")
    a(MAIN, "--ss_l1", type=float, default=1e-8, help="--trainer ss: weight of the sum of sigmoid(scores)")
    a(MAIN, "--ft_init", default="kaiming_normal", help="ft_reinit: weight init")
    a(MAIN, "--ft_full_mode", default="all", choices=FT_FULL_MODES, help="ft_full: how pruned weights train")
    a(MAIN, "--weight_decay_on_zero", type=float, default=1e-3, help="decay_on_zero: decay of pruned weights")
    a(MAIN, "--lr_scale_zero", type=float, default=0.1, help="low_lr_zero: gradient scale of pruned weights")
    a(MAIN, "--discard_mode", action="store_true", help="permanently drop low scores every discard_epoch")
    a(MAIN, "--discard_epoch", type=int, default=10, help="discard interval (epochs)")
    a(MAIN, "--discard_rate", type=float, default=0.1, help="fraction discarded per interval")
    a(MAIN, "--progressive_prune", action="store_true", help="start at k=0.9 and lower k over time")
    a(MAIN, "--once_for_all_list", type=float, nargs="*", default=None, help="kept fractions to share")


def _attack(a):
    a(ALL, "--attack_type", type=_none_or_str, default=None, choices=ATTACK_TYPES,
      help="adversarial training attack (None: natural training)")
    a(ALL, "--epsilon", type=float, default=8, help="L-inf radius in 0-255 pixel units")
    a(ALL, "--epsilon-units", dest="epsilon_units", default="255", choices=("255", "unit"),
      help="units of --epsilon: 255 (8 means 8/255; a value below 1 is an error) or unit "
           "([0, 1] units: 0.03 means 0.03, converted to 7.65/255)")
    a(TRAIN, "--alpha", type=float, default=10, help="fgsm step in 0-255 pixel units")
    a(TRAIN, "--attack_iters", type=int, default=7, help="PGD steps during training")
    a(TRAIN, "--train_step", type=float, default=2,
      help="PGD training step in 0-255 pixel units (the original's 2/255; it ignores --alpha for pgd)")
    a(TRAIN, "--n_repeats", type=int, default=4, help="free adversarial training replays")


def _evaluation(a):
    a(TRAIN, "-e", "--evaluate", action="store_true",
      help="evaluate --pretrained and exit (k, width, arch, layer types from the checkpoint unless given; "
           "writes <run>/eval/<time>.json only)")
    a(TRAIN, "--val_every", type=int, default=3, help="validate every N epochs (and at the last)")
    a(FULL, "--val_rule", default="original", choices=("original", "every"),
      help="train_full.py's validation epochs: original (every 10 epochs up to epoch 60, then --val_every, as "
           "the original) or every (every --val_every epochs and the last, main.py's rule)")
    a(ALL, "--eval_attack", default="pgd", help="evaluation attack: pgd (PGD-20) or autoattack")
    a(ALL, "--eval_step", type=float, default=2,
      help="evaluation PGD step in 0-255 pixel units: PGD-20, transfer examples, R2S's PGD attacks "
           "(the original's 2/255; 20 steps must span --epsilon unless --allow_short_attack)")
    a(ALL, "--allow_short_attack", action="store_true",
      help="allow an evaluation PGD whose steps x step cannot reach the eps-ball's surface (a weaker attack; "
           "recorded in the protocol)")
    a(ALL, "--n_eval", type=int, default=None, help="limit the number of test examples evaluated")
    a(ALL, "--aa_steps", type=int, default=100,
      help="AutoAttack: APGD/APGD-T/FAB iterations (the reference's 100; fewer only for quick checks)")
    a(ALL, "--aa_queries", type=int, default=5000,
      help="AutoAttack: Square's queries per example (the reference's 5000; fewer only for quick checks, "
           "recorded as a reduced protocol)")
    a(ALL, "--aa_version", default="standard", choices=("standard", "plus", "rand"),
      help="AutoAttack version (reference pyautoattack); a randomised model always gets rand")
    a(TRANS, "--all_sources", action="store_true", help="full source x target matrix")
    a(TRANS, "--r2s", action="store_true", help="build and evaluate an R2S model")
    a(TRANS, "--eot_samples", type=int, default=10, help="R2S EOT-PGD: switch draws per step")
    a(TRANS, "--eval_passes", type=int, default=3, help="R2S: evaluation passes (mean and spread)")
    a(TRANS, "--eot_steps", type=int, default=20, help="R2S EOT-PGD: attack steps (step 2/255)")


def _runs(a):
    a(ALL, "--config", default=None, help="YAML preset; its keys are the destination names (prune_rate, ...)")
    a(ALL, "--force", action="store_true",
      help="run again although a finished run with these settings exists (into a new numbered sibling)")
    a(ALL, "--progress", default="auto", choices=PROGRESS_MODES,
      help="progress bars on stderr: auto (when stderr is a terminal), on, off")
    a(ALL, "--log-dir", dest="log_dir", default=None, help="where runs go (default: ./runs)")
    a(ALL, "--name", default=None, help="experiment name (run sub-folder)")
    a(ALL, "--seed", type=int, default=None, help="random seed; fixed seeds make CPU runs repeatable")
    a(ALL, "-p", "--print-freq", dest="print_freq", type=int, default=10, help="log every N batches")
    a(MAIN, "--task", default="search", choices=TASKS, help="search a ticket or fine-tune one")
    a(ALL, "--pretrained", default=None,
      help="checkpoint (or tickets.py export file) to start from / evaluate; test_trans.py: the source ticket")
    a(MAIN, "--pretrained2", default=None, help="second checkpoint (scores from it)")
    a(TRAIN, "--resume", default="", help="checkpoint to resume training from")
    a(TRAIN, "--automatic_resume", action="store_true",
      help="resume from this run's checkpoints/model_latest.pth if it exists (else start); "
           "on CPU with a fixed --seed the result equals an uninterrupted run's")
    a(TRAIN, "--save_every", type=int, default=-1,
      help="write checkpoints/model_latest.pth every N epochs (N <= 0: every epoch), and always after "
           "the last epoch, a new best and on SIGTERM; a kill -9 loses at most N epochs")
    a(ALL, "--not_strict", action="store_true", help="load checkpoints skipping mismatched keys")


def _distributed(a):
    a(ALL, "--device", type=_device, default=None,
      help="cpu, cuda or cuda:N (default: the first --multigpu id, else cuda:0 if CUDA is available, "
           "else cpu; under torchrun each rank uses its LOCAL_RANK)")
    a(ALL, "--multigpu", type=_int_list, default=None, help="GPU ids to use, e.g. 0,1 (CPU if no CUDA)")
    a(ALL, "--amp", default="none", choices=AMP_MODES, help="mixed precision on GPU")
    a(TRAIN, "--compile", action="store_true", help="torch.compile the model (GPU)")
    a(TRAIN, "--channels_last", action="store_true", help="channels-last memory format (GPU speed)")


ADDERS = {"model": _model, "data": _data, "optimisation": _optimisation, "attack": _attack,
          "evaluation": _evaluation, "runs": _runs, "distributed": _distributed}


def add_flags(parser, entry=None):
    """Add ``entry``'s flags (None: every flag) to ``parser``, one argument group per kind."""
    for title in GROUPS:
        group = parser.add_argument_group(title)

        def add(entries, *names, **kwargs):
            if entry is None or entry in entries:
                group.add_argument(*names, **kwargs)
        ADDERS[title](add)
    return parser


def entries_of(dest):
    """The entry points that take the flag whose destination is ``dest``."""
    found = set()

    def add(entries, *names, **kwargs):
        if kwargs.get("dest", names[-1].lstrip("-").replace("-", "_")) == dest:
            found.update(entries)
    for adder in ADDERS.values():
        adder(add)
    return sorted(found - {"demo"})
