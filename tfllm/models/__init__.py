"""Models: checkpoint resolution and Keras task models around Hugging Face TF BERT."""
