"""deblurdiff: the DeblurDiff model (LKPN + EAC + ControlNet on Stable Diffusion), trained on blurforge manifests."""

__version__ = "0.1.0"
