"""Every command line the container tests run, in one place: adjust here when a tool's CLI changes.

Paths inside the containers are under /data, the images' OMNI3_STORAGE_ROOT and WORKDIR.
"""

from __future__ import annotations

# Folder name -> image name, for all six tools (images are tagged :<version> and :latest).
TOOLS: dict[str, str] = {
    "prep": "omni3-prep",
    "import": "omni3-import",
    "sft": "omni3-sft",
    "lora_merge": "omni3-lora-merge",
    "adapter_export": "omni3-adapter-export",
    "export": "omni3-export",
}

# (b) every image: arguments go straight to the tool's console script (the ENTRYPOINT).
HELP = ["--help"]

# (c) a dry run of the tiny stage config: prints the plan, trains nothing.
SFT_DRY_RUN = ["--config", "tiny", "--dry-run"]

# (d) hand-over through a mounted volume.
DATA_MOUNT = "/data"
DATASET = "datasets/synth_receipts"  # relative to the storage root
PREP_SYNTH = ["synth", "--output", f"{DATA_MOUNT}/{DATASET}", "--kind", "receipts", "--sample", "4"]
# A consumer in another image: the tiny SFT config's dry run, its dataset setting pointed at the artifact;
# it reports the dataset's status (the tiny model's checkpoints are not in this volume, so it plans only).
SFT_DATASET_ENV = "OMNI3_CORD_V2_PATH"
SFT_CONSUME = ["--config", "tiny", "--dry-run"]
SFT_DATASET_READY = "status: ok (dataset)"
# A consumer that does real work on the artifact: validation of the published dataset in another container.
# It must refuse an incomplete or damaged copy with the project's "invalid input" exit code.
PREP_VALIDATE = ["energon", "--input"]
EXIT_INVALID_INPUT = 3
