"""LoRA fine-tuning of a LLaMA-style decoder (SmolLM2-135M) on ARC-Easy, LoRA vs LoRA + TempBalance."""
