"""HAWK-I (VLT UT4 near-infrared imager): synthetic data and rules for cpldask."""
