"""The example: a Django shop that uses patchboard, the carriers it calls, the scripts."""
