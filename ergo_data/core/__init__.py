"""The sample record: the canonical Box and its converters, the schema, vision tokens, image decoding, errors."""
