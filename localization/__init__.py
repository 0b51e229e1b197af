"""Localizing new photos against a geo-tagged database (localize.py), split by role:

  * geo: UTM <-> latitude/longitude (transverse Mercator, WGS84) and the positions in datasets_vg file names;
  * photos: listing and checking the photos to localize, and encoding image files in chunks;
  * index: the database index folder (fp16 descriptors, faiss index, positions, files), updated incrementally;
  * predict: search, predicted positions and confidence of each photo;
  * confidence: the confidence definitions and their evaluation on photos with known positions;
  * outputs: predictions.csv, predictions.geojson, prediction pictures and plots;
  * html: the self-contained index.html.
"""
