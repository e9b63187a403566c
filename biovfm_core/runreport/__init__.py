"""`biovfm report RUN`: one HTML page of a run, finished or still going."""
