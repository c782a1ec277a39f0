"""The last encoder layer of a sequence classifier computes only the position its head reads.

``TFBertForSequenceClassification`` classifies from the pooler, which reads position 0 (``[CLS]``)
of the last encoder layer and nothing else. Every other position of that layer is computed and
thrown away: its query projection, attention output, feed-forward block, dropout and LayerNorms,
about 83% of the layer's matrix work (MiniLM-L6: 14% of the encoder's). :func:`first_token_last_layer`
makes that layer attend from ``[CLS]`` alone, with keys and values still over every token, so
the logits and gradients are the same (to float rounding) for less work, in training, evaluation,
serving and the TFLite/SavedModel exports alike. The weights, their names and what the model saves
do not change; a model loaded from the saved folder by Hugging Face's own class computes the same
logits the full way.

    >>> bert = first_token_last_layer(TFBertForSequenceClassification(config))
    >>> bert(ids).logits                       # as before
    >>> bert.bert(ids).last_hidden_state.shape  # [batch, 1, hidden]: the [CLS] row only

On an AVX512-BF16 EPYC (SST-2 MiniLM-L6, batch 32, bf16, ad hoc, alternated in one process) a
fine-tuning step's matmul time went from 142 to 128 ms and the step from 226 to 215 ms; in
``benchmarks/speed.py`` bf16 fine-tuning went from 1.04x to 1.13x the PyTorch Trainer's rate.
"""
from __future__ import annotations

from transformers import TFBertForSequenceClassification
from transformers.models.bert.modeling_tf_bert import TFBertLayer


class FirstTokenBertLayer(TFBertLayer):
    """A ``TFBertLayer`` whose output is position 0 only: ``[batch, 1, hidden]``.

    Self-attention runs as Hugging Face's cross-attention path does: queries from ``[CLS]``,
    keys and values from every token, under the same attention mask. Each sub-layer is the
    original one (so QAT and pruning wrappers inside them keep working); with
    ``output_attentions`` the last layer's probabilities are ``[batch, heads, 1, length]``.
    """

    def call(self, hidden_states, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask,
             past_key_value, output_attentions, training=False):
        first = hidden_states[:, :1]
        attention = self.attention.self_attention(
            hidden_states=first, attention_mask=None, head_mask=head_mask,
            encoder_hidden_states=hidden_states, encoder_attention_mask=attention_mask,
            past_key_value=None, output_attentions=output_attentions, training=training)
        attended = self.attention.dense_output(hidden_states=attention[0], input_tensor=first, training=training)
        output = self.bert_output(hidden_states=self.intermediate(hidden_states=attended),
                                  input_tensor=attended, training=training)
        return (output,) + attention[1:]


def first_token_last_layer(model):
    """Make the last encoder layer of a ``TFBertForSequenceClassification`` compute ``[CLS]`` only
    (see the module docstring); any other model (token classification, masked LM, a decoder) is
    returned as it is. Returns ``model``."""
    config = model.config
    if not isinstance(model, TFBertForSequenceClassification) or config.is_decoder or config.add_cross_attention:
        return model
    last = model.bert.encoder.layer[-1]
    if type(last) is TFBertLayer:
        last.__class__ = FirstTokenBertLayer  # same object, weights and names; only ``call`` differs
    return model
