"""glmkb chains: streaming LLM chain, knowledge-base QA with sources, streaming summarizer.

Every chain streams: callback handlers get ``on_llm_new_token`` live from ``invoke``/
``predict``, and UIs get generators of small event objects (``chains.events``).
"""

from chains.events import Answer, Event, Progress, Reasoning, Source, Sources, Summary, Token
from chains.history import History, format_history, normalize_history, to_messages
from chains.knowledge_base_qa_chain import CONDENSE_STAGE, CONDENSE_TAG, KnowledgeBaseQAChain, format_passages
from chains.progress_callback_handler import ProgressCallbackHandler
from chains.prompts import (
    COLLAPSE_PROMPT,
    COMBINE_PROMPT,
    CONDENSE_QUESTION_PROMPT,
    MAP_PROMPT,
    NO_LLM_MESSAGE,
    QA_PROMPT,
    REFUSAL,
)
from chains.stream_llm_chain import StreamLLMChain
from chains.stream_map_reduce_chain import (
    COLLAPSE_TAG,
    MAP_TAG,
    PROGRESS_EVENT,
    REDUCE_TAG,
    StreamMapReduceChain,
    collapse_summaries,
    load_stream_summarize_chain,
    map_summaries,
    reduce_summaries,
)
from chains.summarize import (
    chapter_documents,
    documents_from_file,
    documents_from_kb,
    documents_from_text,
    parse_chapter_range,
    select_chapters,
    split_to_budget,
    stream_summary,
)

__all__ = [
    "COLLAPSE_PROMPT",
    "COLLAPSE_TAG",
    "COMBINE_PROMPT",
    "CONDENSE_QUESTION_PROMPT",
    "CONDENSE_STAGE",
    "CONDENSE_TAG",
    "MAP_PROMPT",
    "MAP_TAG",
    "NO_LLM_MESSAGE",
    "PROGRESS_EVENT",
    "QA_PROMPT",
    "REDUCE_TAG",
    "REFUSAL",
    "Answer",
    "Event",
    "History",
    "KnowledgeBaseQAChain",
    "Progress",
    "Reasoning",
    "ProgressCallbackHandler",
    "Source",
    "Sources",
    "StreamLLMChain",
    "StreamMapReduceChain",
    "Summary",
    "Token",
    "chapter_documents",
    "collapse_summaries",
    "documents_from_file",
    "documents_from_kb",
    "documents_from_text",
    "format_history",
    "format_passages",
    "load_stream_summarize_chain",
    "map_summaries",
    "normalize_history",
    "parse_chapter_range",
    "reduce_summaries",
    "select_chapters",
    "split_to_budget",
    "stream_summary",
    "to_messages",
]
