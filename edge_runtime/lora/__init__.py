"""LoRA adapters: PEFT folders read without torch (peft.py), converted to GGUF (convert.py), checked and
applied at run time (adapters.py; `Model.set_adapters`)."""
