"""colossal_hammer: continual pretraining and SFT of Llama-family models on Colossal-AI's Booster plugins."""

__version__ = "0.1.0"
