"""asd run: the stages chained in one resumable run folder."""
