"""The release: the model card's table (``matchmill bench card``: :mod:`.model_card`), packing a
trained net as shipped weights (:mod:`.pack`) and the card's training curves (:mod:`.curves`)."""
