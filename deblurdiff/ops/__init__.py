"""Custom operators of DeblurDiff."""

from deblurdiff.ops.eac import eac

__all__ = ["eac"]
