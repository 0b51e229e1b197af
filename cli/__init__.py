"""Command-line flags shared by the scripts: the model's flags and the VG benchmark's (dVGL) names."""
