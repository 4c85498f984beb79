"""Models by name: the catalog, pulling from the Hugging Face Hub (resumable, sha256-checked), and the
registry of what this machine has pulled."""
