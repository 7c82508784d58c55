"""The live input pipeline: masking and grain loaders over prepared datasets."""
