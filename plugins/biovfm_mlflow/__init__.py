"""biovfm logger plugin: MLflow (``pip install 'biovfm[mlflow]'``, then ``--logger mlflow``)."""
