"""Publishing adapters to the Hugging Face Hub and fetching adapters from it (huggingface_hub, no torch)."""
