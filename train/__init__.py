"""MMEarth MP-MAE training: data (``train.data``) and, later, the trainer."""
