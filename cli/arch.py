"""The architecture keys of a model and their defaults: the one source for the parsers, network.GeoLocalizationNet,
checkpoint checks and summaries (util.arch_summary)."""

ARCH_DEFAULTS = {"backbone": "resnet18conv4", "aggregation": "gem", "netvlad_clusters": 64,
                 "fc_output_dim": None, "attention": "none", "l2": "after_pool", "trunc_te": None,
                 "gem_p": 3.0, "rmac_levels": 3}
