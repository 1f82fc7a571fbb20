"""Every configuration key of the project, declared once, with its meaning, unit and allowed values.

Dataset YAML files under ``configs/`` list only what differs from these defaults; command-line
``KEY VALUE`` pairs override both. Booleans are real booleans (``True``/``False``).
"""

from yacs.config import CfgNode as CN

_C = CN()

# -----------------------------------------------------------------------------------------------------
# MODEL
# -----------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Device for training and inference: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
# Under torchrun each process uses the CUDA device of its LOCAL_RANK.
_C.MODEL.DEVICE = "auto"
# Backbone architecture (see model/backbone.py ARCHS): "ViT-B-16" is CLIP's ViT-B/16 (the paper); OpenAI's other
# CLIP image towers are "ViT-B-32", "ViT-L-14" and "ViT-L-14-336px" (ViT-L/14 pretrained at 336 pixels; the
# position grid is resized to INPUT.SIZE_TRAIN / patch in every case); "ViT-Mini-8" is a small CLIP-style ViT
# (patch 8, 128-d, 4 blocks, 4 heads) for the Synthetic demo and tests.
_C.MODEL.NAME = "ViT-B-16"
# Backbone weights: "openai" downloads OpenAI's checkpoint of MODEL.NAME (e.g. ViT-B-16.pt) once
# (SHA256-verified) into MODEL.PRETRAIN_CACHE; a path reads a local OpenAI checkpoint (TorchScript archive or
# state dict with "visual.*" keys); "" means random initialisation. Not read when a whole model is loaded
# (MODEL.INIT_WEIGHTS in train.py, TEST.WEIGHT in test.py).
_C.MODEL.PRETRAIN_PATH = "openai"
# Fine-tuning: a whole MHCF checkpoint (ours, e.g. a model_final.pth, or the authors' released format) that
# train.py starts from instead of MODEL.PRETRAIN_PATH. Every weight is loaded; when the checkpoint was trained
# on another number of identities, the classifiers are re-initialised (the log lists what was loaded and what
# was not). "" trains from MODEL.PRETRAIN_PATH. The CLIP-ReID family's PRETRAIN_CHOICE 'self' / 'finetune'
# with PRETRAIN_PATH, fast-reid's MODEL.WEIGHTS.
_C.MODEL.INIT_WEIGHTS = ""
# Directory for downloaded weights; "" means $XDG_CACHE_HOME/mhcf (default ~/.cache/mhcf).
_C.MODEL.PRETRAIN_CACHE = ""
# Modalities, in the order of the dataset's sub-folders and of every concatenated feature.
_C.MODEL.MODALITIES = ["RGB", "NI", "TI"]
# True: one backbone shared by all modalities, run as one batch (MHCF). False: one backbone per modality.
_C.MODEL.SHARED_BACKBONE = True
# True: one extra BNNeck head (ID + triplet loss) per modality on its backbone class token, besides the three
# fused heads (ori, heat_cls, heat_pat): the authors' vehicle configs. False: the three fused heads only (their
# person configs). The authors' configs call it MODEL.DIRECT, with the opposite meaning (DIRECT True = False
# here); that name is accepted as an alias (config/authors.py).
_C.MODEL.MODALITY_HEADS = False
# Triplet loss on each head's pre-BN feature, batch-hard (per anchor the farthest positive d_ap and the
# nearest negative d_an, Euclidean), averaged over anchors. True: soft margin log(1 + exp(d_ap - d_an)),
# SOLVER.MARGIN unused (CLIP-ReID's TripletLoss() without margin, nn.SoftMarginLoss); False: hinge
# max(0, d_ap - d_an + SOLVER.MARGIN), as all the authors' configs (NO_MARGIN: False). The authors' name
# MODEL.NO_MARGIN is accepted as an alias.
_C.MODEL.SOFT_MARGIN = False
# Weight of every ID (label-smoothed cross-entropy) loss term.
_C.MODEL.ID_LOSS_WEIGHT = 1.0
# Weight of every triplet loss term.
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
# Label smoothing of the ID loss (0 disables it).
_C.MODEL.LABEL_SMOOTHING = 0.1
# Stochastic depth rate of the backbone blocks (0 disables it).
_C.MODEL.DROP_PATH = 0.0
# Recompute the activations of the backbone blocks and of every heat conduction operator in the backward pass
# instead of keeping them (saves most of the activation memory for large batches, costs ~30% time).
_C.MODEL.GRAD_CKPT = False
# Under torchrun on GPUs: convert the BNNeck batch norms to SyncBatchNorm, whose statistics are those of the
# global batch (then every loss term is the one of a single process on that batch); False: each process
# normalises with the statistics of its own share. Triplet mining always spans the global batch.
_C.MODEL.SYNC_BN = False
# On CUDA GPUs (Ampere and later): run the training step's float32 matrix products and convolutions in TF32
# (10-bit mantissa, several times faster; with SOLVER.AMP off, and the few float32 products left under
# autocast). False keeps full float32. The triplet mining's distances and evaluation always compute in full
# float32.
_C.MODEL.TF32 = False
# Wrap the training model with torch.compile (PyTorch 2 graph compiler; the first iterations compile).
_C.MODEL.COMPILE = False
# On CPU in float32: run the linear layers, the CLIP MLPs and the ViT's attention through oneDNN
# (accel/onednn.py, accel/attention.py): on CPUs where PyTorch's default BLAS takes a slower code path (AMD
# CPUs with AVX-512, for one) about twice as fast; same numbers up to float rounding. Applied by the runners
# on CPU only: no effect on GPU, under autocast (SOLVER.AMP) or with MODEL.COMPILE.
_C.MODEL.ONEDNN = True

# Heat conduction between modalities (docs/heat_operator.md).
_C.MODEL.HEAT = CN()
# Diffusion of step 3: "dct" (the exact Neumann heat kernel in the DCT domain) or "stencil" (the authors'
# released operator, needed to evaluate their checkpoints); docs/heat_operator.md has both.
_C.MODEL.HEAT.DIFFUSION = "dct"
# Order of the modality cycle: edges ORDER[0]->ORDER[1]->...->ORDER[-1]->ORDER[0] (a permutation of
# MODEL.MODALITIES).
_C.MODEL.HEAT.ORDER = ["RGB", "NI", "TI"]
# Number of heat cycles (the paper uses 3). 0 is the "no heat" ablation, the concatenation baseline: no
# operator is built, heat_cls is then the backbone class tokens (as ori) and heat_pat their patch-token means.
_C.MODEL.HEAT.NUM_CYCLES = 3
# True: one operator's weights serve every edge and cycle (the authors' code). False: one operator per edge
# and cycle (NUM_CYCLES x the number of modalities operators).
_C.MODEL.HEAT.SHARE_OPERATOR = True
# Initial value of alpha (class<->patch conduction strength) and beta (cross-modal patch heat).
_C.MODEL.HEAT.ALPHA = 0.3
_C.MODEL.HEAT.BETA = 0.2
# Diffusion time tau of the dct operator (dimensionless; one unit = one grid-Laplacian time step).
_C.MODEL.HEAT.TAU = 1.0
# Learn tau (through its logarithm) together with the network (dct only).
_C.MODEL.HEAT.LEARN_TAU = True
# Initial per-channel conductivity k_t = softplus(theta_t) of every target modality (dct only).
_C.MODEL.HEAT.INIT_CONDUCTIVITY = 0.05

# -----------------------------------------------------------------------------------------------------
# INPUT
# -----------------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Image size [H, W] in pixels for training and test (persons 256x128, vehicles 128x256).
_C.INPUT.SIZE_TRAIN = [256, 128]
_C.INPUT.SIZE_TEST = [256, 128]
# Probability of a horizontal flip (the authors' name INPUT.PROB is accepted as an alias).
_C.INPUT.FLIP_PROB = 0.5
# Probability of random erasing (area 2-33% of the image, aspect 0.3-3.3, random pixel values).
_C.INPUT.RE_PROB = 0.5
# Zero padding in pixels before the random crop back to SIZE_TRAIN.
_C.INPUT.PADDING = 10
# Per-channel normalisation mean and std (images in [0, 1]).
_C.INPUT.PIXEL_MEAN = [0.5, 0.5, 0.5]
_C.INPUT.PIXEL_STD = [0.5, 0.5, 0.5]
# False: every modality draws its own random flip/crop/erasing (the reference code). True: one set of
# random parameters for all modalities of a sample, keeping them pixel-aligned.
_C.INPUT.SYNC_AUG = False
# Training for missing modalities (0: off, the paper's recipe). Every training sample then comes twice in
# its batch: complete, and as a copy (same images, same augmentation) that in epoch e has lost modalities
# with probability MODALITY_DROPOUT * min(1, e / MODALITY_DROPOUT_RAMP) (MODALITY_DROPOUT throughout when
# the ramp is 0); it keeps one of the proper, non-empty subsets of MODEL.MODALITIES, all equally likely
# (otherwise all of them). Lost modalities are left out of the model's computation (TEST.MISS_PROTOCOL
# "drop"); the triplet loss mines among the samples that keep the same modalities (loss.presence_groups),
# the ID loss sees all. Batches hold 2 x SOLVER.IMS_PER_BATCH samples; a step costs about 1.5x (lost images
# are not encoded). Drawn like the augmentation, from (SOLVER.SEED, epoch, position in the epoch): resumed
# and distributed runs see the same copies.
_C.INPUT.MODALITY_DROPOUT = 0.0
# Epochs of the linear ramp of MODALITY_DROPOUT (0: no ramp).
_C.INPUT.MODALITY_DROPOUT_RAMP = 0

# -----------------------------------------------------------------------------------------------------
# DATASETS
# -----------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Benchmark: "RGBNT201", "Market-MM", "RGBNT100", "MSVR310" or "Synthetic" (generated on first use).
_C.DATASETS.NAMES = "RGBNT201"
# Directory holding the dataset folders (README: "Datasets").
_C.DATASETS.ROOT_DIR = "./data"

# -----------------------------------------------------------------------------------------------------
# DATALOADER
# -----------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per loader (0 loads in the main process).
_C.DATALOADER.NUM_WORKERS = 8
# Instances per identity in a training batch (K of the PxK sampler); SOLVER.IMS_PER_BATCH must be a
# multiple of it.
_C.DATALOADER.NUM_INSTANCE = 8
# Keep decoded images in memory after their first read (worth it for small datasets; RAM = images x
# decoded size).
_C.DATALOADER.CACHE = False
# Page-locked host memory for faster host-to-GPU copies (CUDA only).
_C.DATALOADER.PIN_MEMORY = True
# Keep worker processes alive between epochs.
_C.DATALOADER.PERSISTENT_WORKERS = True

# -----------------------------------------------------------------------------------------------------
# SOLVER
# -----------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# "Adam", "AdamW" or "SGD".
_C.SOLVER.OPTIMIZER_NAME = "Adam"
# Learning rate of every parameter; biases get BASE_LR * BIAS_LR_FACTOR.
_C.SOLVER.BASE_LR = 3.5e-5
_C.SOLVER.BIAS_LR_FACTOR = 2.0
# L2 weight decay of weights and of biases.
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9
# Training length in epochs (one epoch = one pass of the PxK sampler over the training identities).
_C.SOLVER.MAX_EPOCHS = 40
# Samples per training batch, summed over all processes (each sample has every modality).
_C.SOLVER.IMS_PER_BATCH = 64
# Triplet loss margin (ignored when MODEL.SOFT_MARGIN).
_C.SOLVER.MARGIN = 0.8
# Learning-rate schedule per epoch: "cosine" or "multistep". The defaults are the authors' schedule
# (timm's CosineLRScheduler stepped with the epoch number before each epoch; docs/training.md).
_C.SOLVER.SCHEDULER = "cosine"
# Schedule time t of the first training epoch: epoch e (1-based) trains at the schedule's rate at
# t = e - 1 + SCHEDULE_START. 1: the authors (epoch 1 is already one warm-up step in, epoch MAX_EPOCHS
# trains at the cosine floor); 0: epoch 1 trains at the warm-up's start.
_C.SOLVER.SCHEDULE_START = 1
# Linear warm-up over t < WARMUP_EPOCHS, from WARMUP_FACTOR x the rate that WARMUP_FACTOR_OF names to each
# group's rate: "base" is BASE_LR for every parameter group, biases included (the authors), "group" is
# the group's own rate (biases then start from WARMUP_FACTOR x BASE_LR x BIAS_LR_FACTOR).
_C.SOLVER.WARMUP_EPOCHS = 5
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.WARMUP_FACTOR_OF = "base"
# Cosine: the rate reaches COSINE_MIN_FACTOR x the rate that COSINE_MIN_FACTOR_OF names ("base" or
# "group", as for the warm-up) at t = MAX_EPOCHS.
_C.SOLVER.COSINE_MIN_FACTOR = 0.001
_C.SOLVER.COSINE_MIN_FACTOR_OF = "base"
# Multistep: epochs at which the learning rate is multiplied by GAMMA.
_C.SOLVER.STEPS = [20, 50]
_C.SOLVER.GAMMA = 0.1
# Mixed precision of the training step: "off" (float32), "fp16" (with gradient scaling) or "bf16". The
# heat kernel always runs in float32; evaluation always runs in float32.
_C.SOLVER.AMP = "off"
# Save a numbered snapshot every N epochs (0: only last.pth and model_final.pth).
_C.SOLVER.CHECKPOINT_PERIOD = 0
# Log every N iterations.
_C.SOLVER.LOG_PERIOD = 10
# Evaluate on the test set every N epochs during training (0: only after the final epoch, the reported
# result). The evaluated epoch of highest mAP (the final one included) goes into test_results.json as
# "best_epoch_chosen_on_test_set", beside the final epoch: the authors' protocol (every epoch, every 10 on
# Market-MM), chosen on the test set and labelled so.
_C.SOLVER.EVAL_PERIOD = 0
# Seed of every random generator (data order, augmentation, initialisation).
_C.SOLVER.SEED = 42
# Continue from OUTPUT_DIR/last.pth when it exists.
_C.SOLVER.RESUME = False

# -----------------------------------------------------------------------------------------------------
# TEST
# -----------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Samples per inference batch.
_C.TEST.IMS_PER_BATCH = 128
# Checkpoint that test.py evaluates (ours or the authors' released format); test.py requires it.
_C.TEST.WEIGHT = ""
# L2-normalise test features (distances then rank as cosine similarity).
_C.TEST.FEAT_NORM = True
# Test feature taken "before" or "after" the BNNeck batch norms.
_C.TEST.NECK_FEAT = "before"
# Missing modalities at test time, in query and gallery: "none", a combination of the modalities'
# initials ("r", "n", "t", "rn", "rt", "nt"), or "all" to sweep none and the six settings under both
# protocols (TEST.MISS_PROTOCOL).
_C.TEST.MISS = "none"
# How a missing modality is handled (utils/modalities.py): "zero" (its image is zeros, the model runs as
# usual; as DeMo, TOP-ReID and IDEA evaluate) or "drop" (left out of the model's computation, as in
# training with INPUT.MODALITY_DROPOUT). For one TEST.MISS setting and for TEST.QUERY_MISS /
# TEST.GALLERY_MISS; TEST.MISS "all" evaluates both.
_C.TEST.MISS_PROTOCOL = "zero"
# Any-to-any retrieval: the missing modalities of the query and of the gallery, set independently, in the
# vocabulary of TEST.MISS ("all": every setting, none included). "" means TEST.MISS. When either is set,
# every query setting is evaluated against every gallery setting under TEST.MISS_PROTOCOL (both "all": the
# 7 x 7 table of modality subsets, for three modalities).
_C.TEST.QUERY_MISS = ""
_C.TEST.GALLERY_MISS = ""
# Any-to-any only: where the query and the gallery keep different modalities, compare their L2-normalised
# features minus the mean of their own setting over the training set (processor/view_centres.py; one more
# encoding of the training set per setting compared). Cells with the same modalities on both sides are
# unchanged.
_C.TEST.CENTRE_VIEWS = False
# k-reciprocal re-ranking (Zhong et al., CVPR 2017) and its parameters.
_C.TEST.RE_RANKING = False
_C.TEST.RE_RANKING_K1 = 20
_C.TEST.RE_RANKING_K2 = 6
_C.TEST.RE_RANKING_LAMBDA = 0.3
# Also measure modal bias at every evaluation during training (processor/modal_bias.py, as
# tools/modal_bias.py: retrieval per modality subset, modality gap through the heat cycles, energy
# shares, conductivities and gates) and log it to TensorBoard under "bias/". Costs one more pass over the
# test set and the missing-modality sweep.
_C.TEST.MODAL_BIAS = False
# Queries per evaluation chunk: evaluation memory is about EVAL_CHUNK x gallery size x 4 bytes on CPU
# (x 20 bytes on GPU), plus the features and ~50 MB of float64 blocks for the distances. The figures do not
# depend on it (README, Evaluation).
_C.TEST.EVAL_CHUNK = 256

# -----------------------------------------------------------------------------------------------------
# Output directory: logs, TensorBoard events, checkpoints and test_results.json.
_C.OUTPUT_DIR = "./output"
