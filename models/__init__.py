"""Multi-view diffusion model: UNet, conditioning, VAE, schedules, checkpoint import, sampling."""
