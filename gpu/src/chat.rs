//! Chat messages and chat templates: Hugging Face's Jinja templates rendered with minijinja (with
//! Python string methods, `tojson` and `raise_exception`), and ChatML for the test model.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's tool calls, as Hugging Face templates take them: `{"type": "function",
    /// "function": {"name", "arguments"}}` with the arguments an object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// A tool message's answer to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Default::default() }
    }
}

/// ChatML, the format of the test model (and SmolLM2's own template, less its default system turn).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turn format (Gemma 1, 2 and 3, as their `tokenizer_config.json` templates write it),
/// for GGUF files that carry no template: `<start_of_turn>user` / `model`, a system message folded
/// into the first user turn, each turn closed by `<end_of_turn>`.
pub const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// Phi-3's turn format (its `tokenizer_config.json` template), for GGUF files that carry none: each
/// message as `<|role|>\n` content `<|end|>\n`, the reply opened by `<|assistant|>\n`.
pub const PHI3: &str = "{% for message in messages %}{% if message['role'] in ['system', 'user', 'assistant'] %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

/// A compiled chat template and the special-token strings it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        // As transformers' apply_chat_template renders.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| e.to_string())?;
        Ok(Self { env, source: source.to_string(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when asked.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders `tools` itself (else the caller describes them).
    pub fn knows_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// The prompt for `messages` with `tools` (OpenAI's tool objects) passed to the template as
    /// Hugging Face's `apply_chat_template` passes them.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        t.render(context! {
            messages => minijinja::value::Serde(messages),
            tools => tools.map(minijinja::value::Serde),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            if let Some(detail) = e.detail() {
                msg = format!("{msg}: {detail}");
            }
            msg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    #[test]
    fn gemma_layout_folds_the_system_message_into_the_first_turn() {
        let t = ChatTemplate::new(GEMMA, "<bos>", "<eos>").unwrap();
        assert_eq!(
            t.render(
                &msgs(&[("system", "Be brief."), ("user", " Hi "), ("assistant", "Hello."), ("user", "Bye")]),
                true
            )
            .unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let err = t.render(&msgs(&[("user", "a"), ("user", "b")]), true).unwrap_err();
        assert!(err.contains("must alternate"), "{err}");
    }

    #[test]
    fn phi3_layout() {
        let t = ChatTemplate::new(PHI3, "<s>", "<|endoftext|>").unwrap();
        assert_eq!(
            t.render(&msgs(&[("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")]), true)
                .unwrap(),
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nBye<|end|>\n\
             <|assistant|>\n"
        );
        assert!(t.render(&msgs(&[("user", "Hi")]), false).unwrap().ends_with("<|end|>\n<|endoftext|>"));
    }

    #[test]
    fn chatml_layout() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(&msgs(&[("system", "Be brief."), ("user", "Hi")]), true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.render(&msgs(&[("user", "Hi")]), false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
    }

    /// The constructs Qwen3's template leans on (its own text is not copied here): a namespace
    /// changed inside a loop, a reversed slice, `loop.index0`, string tests and methods, and the
    /// reasoning cut at `</think>`.
    #[test]
    fn qwen3_template_idioms_work() {
        let src = "{%- set ns = namespace(first_user=true, last_query=messages|length - 1) %}\
            {%- for m in messages[::-1] %}{%- set i = (messages|length - 1) - loop.index0 %}\
            {%- if ns.first_user and m.role == 'user' and m.content is string \
                and not (m.content.startswith('<tool_response>') and m.content.endswith('</tool_response>')) %}\
            {%- set ns.first_user = false %}{%- set ns.last_query = i %}{%- endif %}{%- endfor %}\
            {%- for m in messages %}{%- if m.role == 'assistant' and '</think>' in m.content %}\
            {{- '<|im_start|>assistant\\n' + m.content.split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}\
            {%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}\
            {{- ns.last_query }}";
        let t = ChatTemplate::new(src, "", "<|im_end|>").unwrap();
        let out = t
            .render(
                &msgs(&[
                    ("user", "Hi"),
                    ("assistant", "<think>\nweighing\n</think>\n\nHello."),
                    ("user", "<tool_response>42</tool_response>"),
                ]),
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>user\n<tool_response>42</tool_response><|im_end|>\n0"
        );
    }

    #[test]
    fn hugging_face_idioms_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}[{{ m['content'].strip() | upper }}]{% if loop.last %}{{ messages | length | tojson }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(t.render(&msgs(&[("user", "  hi "), ("assistant", "yo")]), false).unwrap(), "<s>[HI][YO]2");
        let err = t.render(&msgs(&[("wizard", "x")]), false).unwrap_err();
        assert!(err.contains("bad role wizard"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
