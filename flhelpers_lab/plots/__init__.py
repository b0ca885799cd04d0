"""The lab's figures (the Beyond, Related, Privacy and FoolsGold-trap studies), in the library's style
(:mod:`flhelpers.plots.style`)."""
