"""Chinese prompts of the whole-book question chain (``chains.book_qa_chain``).

Passages and findings carry numbers ``[n]``; the prompts ask the model to keep them after each
claim, so that the final answer's citations resolve to the passages the map step read.
"""

from __future__ import annotations

from langchain_core.prompts import PromptTemplate

__all__ = ["BOOK_COLLAPSE_PROMPT", "BOOK_MAP_PROMPT", "BOOK_REDUCE_PROMPT", "IRRELEVANT"]

IRRELEVANT = "无关"
"""What the map step answers for a chapter that holds nothing about the question."""

BOOK_MAP_PROMPT = PromptTemplate.from_template(
    "下面是一部作品某一章节中的几个段落，每段前有编号：\n{context}\n\n"
    "问题：{question}\n"
    "请只依据这些段落，用一两句中文写出与问题有关的事实，每条事实后标注所依据的段落编号，如[3]。"
    f"如果这些段落与问题无关，只回答“{IRRELEVANT}”。\n要点："
)

BOOK_COLLAPSE_PROMPT = PromptTemplate.from_template(
    "下面是一部作品中与问题有关的要点，按章节顺序排列，编号[n]指向原文段落：\n{findings}\n\n"
    "问题：{question}\n"
    "请把这些要点合并成更短的中文要点，保留先后顺序和每条事实后的编号[n]。\n合并后的要点："
)

BOOK_REDUCE_PROMPT = PromptTemplate.from_template(
    "下面是从一部作品各章节中摘出的、与问题有关的要点，按章节顺序排列，编号[n]指向原文段落：\n{findings}\n\n"
    "问题：{question}\n"
    "请综合这些要点，用中文按时间顺序完整地回答问题；每句话后保留它所依据的编号，如[3]，"
    "不要写出上面没有的编号。\n回答："
)
