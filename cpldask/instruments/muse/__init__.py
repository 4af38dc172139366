"""MUSE (VLT UT4 integral-field spectrograph): rules, workflow, synthetic data and demo
for cpldask (see :mod:`cpldask.instruments`)."""
