"""LoRA fine-tuning of BEATs as a machine-type classifier (AAM softmax)."""
