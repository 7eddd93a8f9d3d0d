"""Path templates of everything the workflow reads and writes (relative to the workflow directory).
The Snakefile's rules and the package both format these; nothing else spells a path."""

ARCHIVES_DIR = "resources/archives"
ARCHIVE = ARCHIVES_DIR + "/{dataset}/{filename}"
DATASETS_DIR = "resources/datasets"  # real data, extracted from the verified archives
SYNTHETIC_DIR = "resources/synthetic"  # demo data, kept apart so that real and synthetic files never mix
DATASET_READY = "resources/{dataset}.ready"  # written once a dataset is extracted or synthesized
WEIGHTS_DIR = "resources/weights"

MANIFEST = "results/manifests/{dataset}.csv"
SPLIT = "results/splits/{dataset}/{protocol}.csv"
RUN_DIR = "results/runs/{dataset}/{category}/{experiment}/seed{seed}"
MODEL = RUN_DIR + "/model.pt"
TRAIN_LOG = RUN_DIR + "/train_log.csv"
PREDICTIONS = RUN_DIR + "/predictions.npz"
METRICS = RUN_DIR + "/metrics.json"
TRAIN_TIME = RUN_DIR + "/train_time.json"  # seconds and device, read into metrics.json
PREDICT_TIME = RUN_DIR + "/predict_time.json"
FEATURES = "results/features/{dataset}/{category}/{feature_set}/residuals.npz"  # shared residual stage
METRICS_TABLE = "results/metrics.csv"
TABLES_ROOT = "results/tables"
TABLES_DIR = TABLES_ROOT + "/{paper}"  # holds <table>.{csv,md,html} of every table of the paper
FIGURES_ROOT = "results/figures"
FIGURES_DIR = FIGURES_ROOT + "/{paper}"  # holds <figure>.png
RUN_INFO = "results/run_info.yaml"
LOGS = "results/logs/{rule}/{name}.log"
