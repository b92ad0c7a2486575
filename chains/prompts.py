"""Chinese prompts for knowledge-base QA and for summarizing long texts."""

from __future__ import annotations

from langchain_core.prompts import PromptTemplate

__all__ = [
    "COLLAPSE_PROMPT",
    "COMBINE_PROMPT",
    "CONDENSE_QUESTION_PROMPT",
    "MAP_PROMPT",
    "NO_LLM_MESSAGE",
    "QA_PROMPT",
    "REFUSAL",
]

REFUSAL = "根据已知信息无法回答该问题"
"""Said when the knowledge base holds nothing relevant; the LLM is not called."""

NO_LLM_MESSAGE = (
    "未加载语言模型（请在配置中设置 llm.model_path，或设置环境变量 GLMKB_LLM__MODEL_PATH），"
    "无法生成回答。以下是知识库中检索到的相关段落："
)
"""Shown instead of an answer when no LLM is configured: the passages are still returned."""

QA_PROMPT = PromptTemplate.from_template(
    "已知信息：\n{context}\n\n"
    "请只依据上面的已知信息，简洁、准确地用中文回答用户的问题，不要编造已知信息中没有的内容。"
    f"如果已知信息中没有答案，请直接回答“{REFUSAL}”。\n\n"
    "问题：{question}\n回答："
)

CONDENSE_QUESTION_PROMPT = PromptTemplate.from_template(
    "下面是一段对话和用户的后续问题。请把后续问题改写成一个可以脱离对话单独理解的完整问题，"
    "补全其中省略或用代词指代的人物、地点和事件。只输出改写后的问题，不要回答它。\n\n"
    "对话：\n{chat_history}\n\n"
    "后续问题：{question}\n"
    "独立问题："
)

MAP_PROMPT = PromptTemplate.from_template(
    "请用简洁的中文概括下面这段文字的主要内容，保留关键人物、事件和因果关系：\n\n"
    "{text}\n\n"
    "概括："
)

COMBINE_PROMPT = PromptTemplate.from_template(
    "下面是一部作品各部分按顺序排列的概要。请把它们整合成一篇连贯、完整的中文摘要，"
    "按时间顺序交代主要人物和情节发展，不要逐条罗列：\n\n"
    "{text}\n\n"
    "摘要："
)

COLLAPSE_PROMPT = PromptTemplate.from_template(
    "下面是连续几部分内容的概要。请把它们合并成一段更短的中文概要，"
    "保留主要人物、关键事件和先后顺序：\n\n"
    "{text}\n\n"
    "合并后的概要："
)
