"""Networks of the SelVA system (generator, TextSynch, VAE, vocoder, text encoders, LoRA)."""
